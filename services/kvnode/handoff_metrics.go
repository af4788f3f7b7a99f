package kvnode

import "github.com/prometheus/client_golang/prometheus"

// handoffMetrics count keys moving between nodes, on both sides.
type handoffMetrics struct {
	copied  prometheus.Counter // target: entries and changes applied from sources
	dropped prometheus.Counter // keys dropped because the node no longer owns them
	sources prometheus.Gauge   // target: sources the move in progress copies from
	frozen  prometheus.Gauge   // source: targets it has frozen keys for
}

func newHandoffMetrics(reg prometheus.Registerer) *handoffMetrics {
	m := &handoffMetrics{
		copied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_handoff_keys_copied_total",
			Help: "Snapshot entries and changes this node applied from other nodes while keys moved to it.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_handoff_keys_dropped_total",
			Help: "Keys this node dropped because it owns them in neither the current ring nor the next one.",
		}),
		sources: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_handoff_sources",
			Help: "Nodes this node is copying keys from for the membership change in progress (0 when none).",
		}),
		frozen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_handoff_frozen",
			Help: "Targets for which this node refuses writes to the keys moving to them (MOVING) until the ring flips.",
		}),
	}
	reg.MustRegister(m.copied, m.dropped, m.sources, m.frozen)
	return m
}
