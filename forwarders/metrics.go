package forwarders

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/spool"
)

// metrics are the forwarders' Prometheus series, registered on the injected
// registerer, never the global one.
type metrics struct {
	delivered    *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	retries      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	up           *prometheus.GaugeVec
}

// deadLetterReasons are the reasons a dispatcher dead-letters with.
var deadLetterReasons = []string{spool.ReasonRejected, spool.ReasonExpired}

func newMetrics(reg prometheus.Registerer, names []string, sp store) (*metrics, error) {
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_events_delivered_total",
			Help: "Events a destination accepted.",
		}, []string{"destination"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_events_dead_lettered_total",
			Help: "Events moved to the dead-letter store instead of being delivered, by reason.",
		}, []string{"destination", "reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_forward_retries_total",
			Help: "Batches sent again, by why the previous attempt failed.",
		}, []string{"destination", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spillway_forward_request_duration_seconds",
			Help:    "Time of one send to a destination, failed ones included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"destination"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_destination_up",
			Help: "1 while the destination accepts batches, 0 while it is failing or misconfigured.",
		}, []string{"destination"}),
	}
	for _, n := range names {
		m.delivered.WithLabelValues(n)
		m.duration.WithLabelValues(n)
		m.up.WithLabelValues(n).Set(1)
		for _, r := range deadLetterReasons {
			m.deadLettered.WithLabelValues(n, r)
		}
		for _, r := range retryReasons {
			m.retries.WithLabelValues(n, r)
		}
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.delivered, m.deadLettered, m.retries, m.duration, m.up,
		&backlogCollector{names: names, sp: sp}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var (
	backlogDesc = prometheus.NewDesc("spillway_destination_backlog_events",
		"Events stored and not yet done (delivered, filtered or dead-lettered) for the destination.",
		[]string{"destination"}, nil)
	lagDesc = prometheus.NewDesc("spillway_destination_lag_seconds",
		"Age of the destination's oldest event not yet done; 0 when its backlog is empty.",
		[]string{"destination"}, nil)
)

// backlogCollector asks the spool at scrape time, so the values are never
// stale and no goroutine refreshes them.
type backlogCollector struct {
	names []string
	sp    store
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backlogDesc
	ch <- lagDesc
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, n := range c.names {
		b := c.sp.Backlog(n)
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(b.Events), n)
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, lagOf(b, now), n)
	}
}

func lagOf(b spool.Backlog, now time.Time) float64 {
	if b.Events == 0 || b.Oldest.IsZero() {
		return 0
	}
	return max(now.Sub(b.Oldest).Seconds(), 0)
}
