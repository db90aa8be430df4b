package spool

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fsync       prometheus.Histogram
	bytes       prometheus.Gauge
	blocks      prometheus.Gauge
	deadLetters prometheus.Gauge
	corrupt     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Spool) *metrics {
	m := &metrics{
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "spillway_fsync_duration_seconds",
			Help:    "Time to commit and fsync one group of appended events.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_spool_bytes",
			Help: "Size of the spool directory on disk.",
		}),
		blocks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_spool_blocks",
			Help: "Event blocks stored and not yet reclaimed.",
		}),
		deadLetters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_dead_letters",
			Help: "Events in the dead-letter store.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spillway_spool_corrupt_blocks_total",
			Help: "Blocks that failed their checksum or decoding and were quarantined.",
		}),
	}
	m.blocks.Set(float64(s.countKeys(prefixBlock)))
	m.deadLetters.Set(float64(s.countKeys(prefixDead)))
	if reg != nil {
		reg.MustRegister(m.fsync, m.bytes, m.blocks, m.deadLetters, m.corrupt)
	}
	return m
}
