package cdc

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	published  prometheus.Counter
	confirmed  prometheus.Counter
	nacked     prometheus.Counter
	returned   prometheus.Counter
	reconnects prometheus.Counter
	connected  prometheus.Gauge
	checkpoint prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, r *Relay) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_cdc_published_total", Help: "Events published to the broker, counting those published again after a reconnect.",
		}),
		confirmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_cdc_confirmed_total", Help: "Published events the broker confirmed.",
		}),
		nacked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_cdc_nacked_total", Help: "Published events the broker refused (nack); they are published again.",
		}),
		returned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_cdc_returned_total", Help: "Events the broker returned because no queue was bound to receive them.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_cdc_connections_total", Help: "Connections to the broker established by the relay.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_cdc_connected", Help: "1 while the relay is connected to the broker, else 0.",
		}),
		checkpoint: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_cdc_checkpoint_revision", Help: "Persisted checkpoint: every event up to this revision was confirmed.",
		}),
	}
	lagRevisions := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flux_cdc_lag_revisions", Help: "Durable revisions of the log not yet confirmed by the broker.",
	}, func() float64 { return float64(r.lagRevisions()) })
	lagSeconds := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flux_cdc_lag_seconds", Help: "Age of the oldest event read from the log and not yet confirmed; 0 if none.",
	}, func() float64 { return r.lagAge().Seconds() })
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.published, m.confirmed, m.nacked, m.returned, m.reconnects, m.connected, m.checkpoint, lagRevisions, lagSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// lagRevisions is how many durable revisions await a confirm.
func (r *Relay) lagRevisions() int64 {
	return max(0, r.src.Durable()-r.confirmed.Load())
}

// lagAge is how long the oldest event read but not confirmed has waited
// since its commit. Events not read yet (while the broker is unreachable)
// count from the moment the relay reads them; lagRevisions shows those.
func (r *Relay) lagAge() time.Duration {
	ns := r.oldest.Load()
	if ns == 0 {
		return 0
	}
	return max(0, time.Since(time.Unix(0, ns)))
}
