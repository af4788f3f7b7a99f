package changelog

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	size      prometheus.Gauge
	buffered  prometheus.Gauge
	fsync     prometheus.Histogram
	slowSyncs prometheus.Counter
	stalls    prometheus.Counter
	rewrites  *prometheus.CounterVec
	rewriteD  prometheus.Histogram
	replayed  prometheus.Gauge
	dropped   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_aof_size_bytes", Help: "Bytes in the append-only file's segments.",
		}),
		buffered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_aof_buffer_bytes", Help: "Bytes of records waiting to be written to the append-only file.",
		}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flux_aof_fsync_seconds",
			Help:    "Time taken by fsync of the append-only file.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		slowSyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_aof_slow_fsyncs_total", Help: "Fsyncs of the append-only file that took more than two seconds.",
		}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_aof_stalls_total", Help: "Times writers were held because the append-only file's buffer was full.",
		}),
		rewrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flux_aof_rewrites_total", Help: "Rewrites of the append-only file, by result (ok, deferred, error).",
		}, []string{"result"}),
		rewriteD: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flux_aof_rewrite_seconds",
			Help:    "Time taken by successful rewrites of the append-only file.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		replayed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_aof_replayed_records", Help: "Records replayed from the append-only file at start.",
		}),
		dropped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flux_aof_torn_bytes_dropped", Help: "Bytes of a torn last record cut off at start.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.size, m.buffered, m.fsync, m.slowSyncs, m.stalls, m.rewrites, m.rewriteD, m.replayed, m.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
