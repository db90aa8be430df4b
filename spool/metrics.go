package spool

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fsync       prometheus.Histogram
	bytes       prometheus.Gauge
	blocks      prometheus.Gauge
	deadLetters prometheus.Gauge
	corrupt     prometheus.Counter
	generations prometheus.Counter
	dropped     *prometheus.CounterVec
	resent      *prometheus.CounterVec
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
		generations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spillway_spool_generations_started_total",
			Help: "Generations started; each is removed whole once every destination has passed it.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_events_dropped_total",
			Help: "Undelivered events dropped to make room (--when-full=drop-oldest).",
		}, []string{"destination", "reason"}),
		resent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_events_resent_total",
			Help: "Events a destination had read, or after a crash may have read, and not acknowledged when spillway last stopped (a crash, or a drain cut short): sent again after the restart, so they may arrive twice. After a crash it counts up to 8192 more per destination than were read.",
		}, []string{"destination"}),
	}
	blocks := 0
	for _, g := range s.gens {
		blocks += g.blocks
	}
	m.blocks.Set(float64(blocks))
	for _, name := range s.cfg.Consumers {
		m.dropped.WithLabelValues(name, "spool_full")
		m.resent.WithLabelValues(name)
	}
	if reg != nil {
		reg.MustRegister(m.fsync, m.bytes, m.blocks, m.deadLetters, m.corrupt, m.generations, m.dropped, m.resent)
	}
	return m
}
