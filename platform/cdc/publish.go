package cdc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
)

const (
	dialTimeout = 10 * time.Second // for TCP connect and then for the AMQP handshake
	// closeTimeout bounds the polite connection close; the socket is
	// closed regardless after it.
	closeTimeout     = 5 * time.Second
	lagCheckInterval = time.Second
)

// Message properties of every event.
const (
	ContentType = "application/protobuf"
)

// MessageType is the AMQP type property of every event: the full name of
// the protobuf message in the body.
var MessageType = string((&cdcv1.ChangeEvent{}).ProtoReflect().Descriptor().FullName())

var errNacked = errors.New("broker refused a published event (nack)")

// DeclareExchange declares the durable topic exchange name on ch with the
// arguments the relay uses, so consumers may declare it first.
func DeclareExchange(ch *amqp.Channel, name string) error {
	return ch.ExchangeDeclare(name, amqp.ExchangeTopic, true, false, false, false, nil)
}

// OpName is an op as routing keys and the op header spell it: put, delete or
// expire.
func OpName(op cdcv1.Op) string {
	return strings.ToLower(strings.TrimPrefix(op.String(), "OP_"))
}

// run is the relay's goroutine: one session per connection, with backoff
// between them, until Close.
func (r *Relay) run() {
	defer close(r.donec)
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		r.monitor()
	}()
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     r.cfg.ReconnectMin,
		RandomizationFactor: 0.2, // so that the nodes of a cluster do not reconnect in step
		Multiplier:          2,
		MaxInterval:         r.cfg.ReconnectMax,
	}
	bo.Reset()
	for {
		start := time.Now()
		connected, progress, err := r.session()
		if r.stopping() {
			break
		}
		// A connection that lasted is a new outage, not a flapping broker.
		if progress || (connected && time.Since(start) > r.cfg.ReconnectMax) {
			bo.Reset()
		}
		delay := min(bo.NextBackOff(), r.cfg.ReconnectMax)
		switch {
		case errors.Is(err, errNacked):
			// Logged where it happened; the connection was given up on purpose.
		case connected:
			r.downSince = time.Now()
			r.log.Warn("cdc: broker connection lost; events wait in the log", "err", err, "retry_in", delay)
		default:
			if r.downSince.IsZero() {
				r.downSince = time.Now()
			}
			r.connectLog.Do(func() {
				r.log.Warn("cdc: cannot connect to the broker; events wait in the log", "err", err, "retry_in", delay,
					"down_for", time.Since(r.downSince).Round(time.Millisecond))
			})
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.stopCtx.Done():
			t.Stop()
		}
		if r.stopping() {
			break
		}
	}
	r.saveErr = r.saveCheckpoint(true)
	<-monitorDone
}

func (r *Relay) stopping() bool { return r.stopCtx.Err() != nil }

// connect dials the broker and prepares a confirming channel with the
// exchange (and queue) declared.
func (r *Relay) connect() (*amqp.Connection, *amqp.Channel, error) {
	props := amqp.NewConnectionProperties()
	props["connection_name"] = "flux-cdc " + r.cfg.NodeID
	conn, err := amqp.DialConfig(r.cfg.URL, amqp.Config{Dial: r.dial, Properties: props, TLSClientConfig: r.cfg.TLS.Clone()})
	if err != nil {
		r.forgetConn()
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	ch, err := r.prepare(conn)
	if err != nil {
		r.closeConn(conn)
		return nil, nil, err
	}
	return conn, ch, nil
}

func (r *Relay) prepare(conn *amqp.Connection) (*amqp.Channel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := DeclareExchange(ch, r.cfg.Exchange); err != nil {
		return nil, fmt.Errorf("declare exchange %q: %w", r.cfg.Exchange, err)
	}
	if r.cfg.Queue != "" {
		if _, err := ch.QueueDeclare(r.cfg.Queue, true, false, false, false, nil); err != nil {
			return nil, fmt.Errorf("declare queue %q: %w", r.cfg.Queue, err)
		}
		if err := ch.QueueBind(r.cfg.Queue, "#", r.cfg.Exchange, false, nil); err != nil {
			return nil, fmt.Errorf("bind queue %q: %w", r.cfg.Queue, err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	return ch, nil
}

// dial connects like amqp.DefaultDial, but gives up when the relay stops and
// closes the socket when Close stops waiting: the AMQP library's blocking
// calls (a publish stuck on a full socket, the close handshake) end only
// when their socket does.
func (r *Relay) dial(network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(r.stopCtx, network, addr)
	if err != nil {
		return nil, err
	}
	// Heartbeats start only after the handshake; the library clears this.
	if err := c.SetDeadline(time.Now().Add(dialTimeout)); err != nil {
		_ = c.Close()
		return nil, err
	}
	r.unwatch = context.AfterFunc(r.killCtx, func() { _ = c.Close() })
	return c, nil
}

// inflight is an event published and not yet confirmed.
type inflight struct {
	rev     int64
	time    time.Time
	confirm *amqp.DeferredConfirmation
}

// session publishes the log from the checkpoint over one connection, until
// the connection fails, the broker nacks, or the relay stops and its
// published events are confirmed. connected reports whether the connection
// was established, progress whether any event was confirmed.
func (r *Relay) session() (connected, progress bool, err error) {
	conn, ch, err := r.connect()
	if err != nil {
		return false, false, err
	}
	r.metrics.reconnects.Inc()
	r.metrics.connected.Set(1)
	defer r.metrics.connected.Set(0)
	from := r.confirmed.Load()
	if r.downSince.IsZero() {
		r.log.Info("cdc: connected to the broker", "from_revision", from+1)
	} else {
		r.log.Info("cdc: broker connection restored", "from_revision", from+1,
			"down_for", time.Since(r.downSince).Round(time.Millisecond))
		r.downSince = time.Time{}
	}

	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	// The library delivers returns synchronously from its reader, so they
	// are drained apart from the publishing loop, which may be blocked on a
	// full socket.
	returns := ch.NotifyReturn(make(chan amqp.Return, 64))
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	ctx, cancel := context.WithCancel(r.stopCtx)
	batches := make(chan []Event)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for ret := range returns {
			r.onReturn(ret)
		}
	}()
	go func() {
		defer wg.Done()
		for b := range blocked {
			if b.Active {
				r.log.Warn("cdc: broker blocks publishers (resource alarm); events wait in the log", "reason", b.Reason)
			} else {
				r.log.Info("cdc: broker accepts publishers again")
			}
		}
	}()
	go func() {
		defer wg.Done()
		r.read(ctx, from, batches)
	}()
	defer func() {
		cancel()
		r.closeConn(conn)
		wg.Wait()
	}()

	var (
		pending  []inflight
		queue    []Event // read, not yet published
		stopc    = r.stopCtx.Done()
		stopping bool
		tick     = time.NewTicker(r.cfg.CheckpointInterval)
	)
	defer tick.Stop()
	for {
		for !stopping && len(queue) > 0 && len(pending) < r.cfg.Window {
			ev := queue[0]
			if ev.Internal {
				// Nothing to publish: the event is confirmed with the one
				// before it, or at once when none is waiting.
				queue = queue[1:]
				if len(pending) > 0 {
					pending[len(pending)-1].rev = ev.Revision
				} else {
					r.confirmed.Store(ev.Revision)
					progress = true
					// Nothing is outstanding but what is queued: the lag
					// in seconds must not stay at a batch that was all
					// internal.
					r.setOldest(pending, queue)
				}
				continue
			}
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, r.cfg.Exchange, OpName(ev.Op)+"."+r.cfg.NodeID,
				true, false, r.message(ev))
			if err != nil {
				return true, progress, fmt.Errorf("publish revision %d: %w", ev.Revision, err)
			}
			r.metrics.published.Inc()
			pending = append(pending, inflight{rev: ev.Revision, time: ev.Time, confirm: dc})
			queue = queue[1:]
		}
		if stopping && len(pending) == 0 {
			return true, progress, nil
		}
		var recv <-chan []Event
		if !stopping && len(queue) == 0 && len(pending) < r.cfg.Window {
			recv = batches
		}
		var head <-chan struct{}
		if len(pending) > 0 {
			head = pending[0].confirm.Done()
		}
		select {
		case evs := <-recv:
			queue = evs
			r.oldest.CompareAndSwap(0, evs[0].Time.UnixNano())
		case <-head:
			n := 0
			for ; n < len(pending) && pending[n].confirm.Acked(); n++ {
				r.confirmed.Store(pending[n].rev)
			}
			if n > 0 {
				progress = true
				r.metrics.confirmed.Add(float64(n))
				pending = pending[n:]
				r.setOldest(pending, queue)
				_ = r.saveCheckpoint(false)
			}
			if len(pending) > 0 && isDone(pending[0].confirm) && !pending[0].confirm.Acked() {
				// The library fails the confirms of a closed channel
				// like nacks; only the broker's own count as nacks.
				if ch.IsClosed() {
					return true, progress, errors.New("channel closed with events unconfirmed")
				}
				r.metrics.nacked.Inc()
				n := r.nacked.Add(1)
				r.nackLog.Do(func() {
					r.log.Error("cdc: broker refused an event (nack); publishing again from the checkpoint",
						"revision", pending[0].rev, "nacked_total", n)
				})
				return true, progress, errNacked
			}
		case e := <-connClosed:
			return true, progress, closeError("connection", e)
		case e := <-chClosed:
			return true, progress, closeError("channel", e)
		case <-stopc:
			stopping, stopc = true, nil
			cancel()
		case <-r.killCtx.Done():
			return true, progress, r.killCtx.Err()
		case <-tick.C:
			_ = r.saveCheckpoint(false)
		}
	}
}

func isDone(dc *amqp.DeferredConfirmation) bool {
	select {
	case <-dc.Done():
		return true
	default:
		return false
	}
}

func closeError(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("%s closed", what)
	}
	return fmt.Errorf("%s closed: %w", what, e)
}

// setOldest records the commit time of the oldest unconfirmed event the
// relay holds, for the lag in seconds.
func (r *Relay) setOldest(pending []inflight, queue []Event) {
	switch {
	case len(pending) > 0:
		r.oldest.Store(pending[0].time.UnixNano())
	case len(queue) > 0:
		r.oldest.Store(queue[0].Time.UnixNano())
	default:
		r.oldest.Store(0)
	}
}

func (r *Relay) closeConn(conn *amqp.Connection) {
	// CloseDeadline waits for the broker's reply; a broker that is gone
	// would otherwise hold the relay until the heartbeat notices.
	_ = conn.CloseDeadline(time.Now().Add(closeTimeout))
	r.forgetConn()
}

// forgetConn drops the watch dial put on the last socket.
func (r *Relay) forgetConn() {
	if r.unwatch != nil {
		r.unwatch()
		r.unwatch = nil
	}
}

// message is the AMQP message of ev.
func (r *Relay) message(ev Event) amqp.Publishing {
	op := OpName(ev.Op)
	return amqp.Publishing{
		ContentType:  ContentType,
		Type:         MessageType,
		MessageId:    r.cfg.NodeID + ":" + strconv.FormatInt(ev.Revision, 10),
		DeliveryMode: amqp.Persistent,
		Timestamp:    ev.Time,
		Headers: amqp.Table{
			"node_id":  r.cfg.NodeID,
			"revision": ev.Revision,
			"op":       op,
			"key":      ev.Key,
		},
		Body: ev.Data,
	}
}

// read feeds batches of the log above after to out until ctx ends. Errors of
// the source are logged and retried: the relay has no other way on.
func (r *Relay) read(ctx context.Context, after int64, out chan<- []Event) {
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     r.cfg.ReconnectMin,
		RandomizationFactor: 0.2,
		Multiplier:          2,
		MaxInterval:         r.cfg.ReconnectMax,
	}
	bo.Reset()
	for {
		evs, err := r.src.Read(ctx, after, r.cfg.Window)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = r.check(after, evs)
		}
		if err != nil {
			r.readLog.Do(func() { r.log.Error("cdc: cannot read the log; retrying", "after", after, "err", err) })
			t := time.NewTimer(min(bo.NextBackOff(), r.cfg.ReconnectMax))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		bo.Reset()
		select {
		case out <- evs:
			after = evs[len(evs)-1].Revision
		case <-ctx.Done():
			return
		}
	}
}

// check holds a batch from the source to its contract. A gap is published
// anyway, loudly: the missing events are gone from the log, and waiting for
// them would stop the relay for good.
func (r *Relay) check(after int64, evs []Event) error {
	if len(evs) == 0 {
		return errors.New("source returned no events")
	}
	prev := after
	for _, ev := range evs {
		if ev.Revision <= prev {
			return fmt.Errorf("source returned revision %d after %d", ev.Revision, prev)
		}
		if ev.Revision != prev+1 {
			r.log.Error("cdc: the log is missing events; they cannot be published", "from", prev+1, "to", ev.Revision-1)
		}
		prev = ev.Revision
	}
	return nil
}

// onReturn reports an event the broker could not route to any queue. It
// still counts as confirmed (the broker confirms a returned message), so
// it is logged and counted rather than retried forever.
func (r *Relay) onReturn(ret amqp.Return) {
	r.metrics.returned.Inc()
	n := r.returned.Add(1)
	r.returnLog.Do(func() {
		r.log.Warn("cdc: broker returned an event that no queue is bound to receive; bind a queue to the exchange or set Queue",
			"message_id", ret.MessageId, "routing_key", ret.RoutingKey, "reason", ret.ReplyText, "returned_total", n)
	})
}

// monitor checks the lag once a second until the relay stops.
func (r *Relay) monitor() {
	t := time.NewTicker(lagCheckInterval)
	defer t.Stop()
	lagging := false
	for {
		select {
		case <-r.stopCtx.Done():
			return
		case <-t.C:
		}
		r.probeOldest()
		revs, age := r.lagRevisions(), r.lagAge()
		over := (r.cfg.MaxLag > 0 && revs > r.cfg.MaxLag) || (r.cfg.MaxLagAge > 0 && age > r.cfg.MaxLagAge)
		switch {
		case over:
			lagging = true
			r.lagLog.Do(func() {
				r.log.Error("cdc: relay is behind the log; events are delayed, not lost", "lag_revisions", revs,
					"lag", age.Round(time.Millisecond), "max_lag_revisions", r.cfg.MaxLag, "max_lag", r.cfg.MaxLagAge,
					"checkpoint", r.Checkpoint())
			})
		case lagging:
			lagging = false
			r.log.Info("cdc: relay caught up with the log", "lag_revisions", revs, "lag", age.Round(time.Millisecond))
		}
	}
}

// probeOldest learns the commit time of the oldest unconfirmed event when the
// relay holds none, as while the broker is down, so that the lag in seconds
// keeps growing during an outage.
func (r *Relay) probeOldest() {
	after := r.confirmed.Load()
	if r.oldest.Load() != 0 || r.src.Durable() <= after {
		return
	}
	ctx, cancel := context.WithTimeout(r.stopCtx, lagCheckInterval/2)
	defer cancel()
	evs, err := r.src.Read(ctx, after, 1)
	if err != nil || len(evs) == 0 {
		return
	}
	t := evs[0].Time.UnixNano()
	// The relay may have confirmed the event meanwhile and cleared oldest
	// before this swap; then the stale time is taken back.
	if r.oldest.CompareAndSwap(0, t) && r.confirmed.Load() >= evs[0].Revision {
		r.oldest.CompareAndSwap(t, 0)
	}
}
