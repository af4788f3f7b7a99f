package cdc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

func TestBrokerOutage(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	p := amqptest.NewProxy(t, broker)
	const node = "node-e"
	src := newMemSource(node)
	h := newRelay(t, cdc.Config{
		URL: p.URL(), NodeID: node, Exchange: exchange, Queue: queue,
		CheckpointDir: t.TempDir(), CheckpointInterval: 20 * time.Millisecond,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
	}, src)
	h.relay.Start()

	// The node keeps writing throughout; its writes never wait for the relay.
	stopWriting := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopWriting:
				return
			case <-t.C:
				src.Append(10)
			}
		}
	}()
	defer func() {
		select {
		case <-stopWriting:
		default:
			close(stopWriting)
		}
		<-writerDone
	}()

	eventually(t, "events confirmed", func() bool { return h.relay.Checkpoint() > 0 })
	p.Cut()
	eventually(t, "the relay to see the outage", func() bool { return h.metric(t, "flux_cdc_connected") == 0 })
	time.Sleep(3 * time.Second)
	if lag := h.metric(t, "flux_cdc_lag_revisions"); lag <= 0 {
		t.Errorf("lag %v revisions during the outage, want some", lag)
	}
	if lag := h.metric(t, "flux_cdc_lag_seconds"); lag <= 0 {
		t.Errorf("lag %v seconds during the outage, want some", lag)
	}
	p.Restore()
	eventually(t, "the relay to reconnect", func() bool { return h.metric(t, "flux_cdc_connected") == 1 })
	time.Sleep(300 * time.Millisecond)
	close(stopWriting)
	<-writerDone
	last := src.Durable()

	got := amqptest.Consume(t, broker, queue)
	got.Wait(t, node, last, waitTimeout)
	got.CheckExactlyOnce(t, node, last, false)
	eventually(t, "checkpoint at the last revision", func() bool { return h.relay.Checkpoint() == last })
	if n := h.metric(t, "flux_cdc_connections_total"); n < 2 {
		t.Errorf("%v connections, want a reconnect", n)
	}
	logs := h.logs.String()
	for _, want := range []string{"broker connection lost", "broker connection restored"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestCloseGivesUpWaitingForConfirms(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	p := amqptest.NewProxy(t, broker)
	const node = "node-g"
	src := newMemSource(node)
	src.Append(100)
	dir := t.TempDir()
	cfg := cdc.Config{
		URL: p.URL(), NodeID: node, Exchange: exchange, Queue: queue,
		CheckpointDir: dir, CheckpointInterval: 20 * time.Millisecond,
	}
	first := newRelay(t, cfg, src)
	first.relay.Start()
	eventually(t, "events confirmed", func() bool { return first.relay.Checkpoint() == 100 })

	// The broker stops answering but the connection stays up: published
	// events wait for confirms that do not come.
	p.Freeze()
	last := src.Append(100)
	eventually(t, "events published", func() bool { return first.metric(t, "flux_cdc_published_total") > 100 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := first.close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("close: %v, want it to give up at the deadline", err)
	}
	if cp := first.relay.Checkpoint(); cp != 100 {
		t.Errorf("checkpoint %d, want 100: nothing after it was confirmed", cp)
	}
	p.Thaw()

	// What was left unconfirmed is published again by the next relay.
	second := newRelay(t, cfg, src)
	second.relay.Start()
	got := amqptest.Consume(t, broker, queue)
	got.Wait(t, node, last, waitTimeout)
	got.CheckExactlyOnce(t, node, last, false)
}
