package changelog

import (
	"fmt"

	"github.com/fluxkv/fluxkv/platform/store"
)

// applyBatch is how many decoded changes replay hands over at a time.
const applyBatch = 512

// applier applies replayed changes on a goroutine of its own, in order, so
// that reading and decoding the log overlaps with updating the store.
type applier struct {
	target  Target
	batch   []store.Change
	batches chan []store.Change
	free    chan []store.Change
	donec   chan struct{}
	err     error // set by the goroutine before donec closes
	closed  bool
}

func startApplier(t Target) *applier {
	a := &applier{
		target:  t,
		batch:   make([]store.Change, 0, applyBatch),
		batches: make(chan []store.Change, 4),
		free:    make(chan []store.Change, 4),
		donec:   make(chan struct{}),
	}
	go a.run()
	return a
}

func (a *applier) run() {
	defer close(a.donec)
	for batch := range a.batches {
		for _, c := range batch {
			if a.err != nil {
				break
			}
			if err := a.target.Apply(c); err != nil {
				a.err = fmt.Errorf("apply revision %d: %w", c.Revision, err)
			}
		}
		select {
		case a.free <- batch[:0]:
		default:
		}
	}
}

// add queues c. It returns an error once applying has failed.
func (a *applier) add(c store.Change) error {
	a.batch = append(a.batch, c)
	if len(a.batch) < applyBatch {
		return nil
	}
	select {
	case <-a.donec:
		return a.err
	case a.batches <- a.batch:
	}
	select {
	case a.batch = <-a.free:
	default:
		a.batch = make([]store.Change, 0, applyBatch)
	}
	return nil
}

// close applies what is queued, stops the goroutine and returns the first
// apply error. It is idempotent.
func (a *applier) close() error {
	if !a.closed {
		a.closed = true
		if len(a.batch) > 0 {
			select {
			case <-a.donec:
			case a.batches <- a.batch:
			}
		}
		close(a.batches)
	}
	<-a.donec
	return a.err
}
