package sources

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a consumed record (spillway_source_records_total).
const (
	outcomeStored  = "stored"  // in the spool as an event
	outcomeInvalid = "invalid" // in the dead-letter store: not a JSON object
)

// Changes of a source's partitions (spillway_source_rebalances_total).
const (
	changeAssigned = "assigned"
	changeRevoked  = "revoked"
	changeLost     = "lost"
)

// metrics are the sources' Prometheus series. Labels are the source names,
// which the flags bound, and fixed sets; never a partition or a key.
type metrics struct {
	records      *prometheus.CounterVec
	rebalances   *prometheus.CounterVec
	commitErrors *prometheus.CounterVec
	partitions   *prometheus.GaugeVec
	paused       *prometheus.GaugeVec
}

// newMetrics registers the series of the named sources; the commit lag is
// asked of g's sources at each scrape.
func newMetrics(reg prometheus.Registerer, names []string, g *Group) (*metrics, error) {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_source_records_total",
			Help: "Records consumed and durable in the spool, as events (stored; records skipped as already stored are not counted) or as dead letters (invalid).",
		}, []string{"source", "outcome"}),
		rebalances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_source_rebalances_total",
			Help: "Rebalances of the consumer group that changed this relay's partitions: assigned, revoked or lost.",
		}, []string{"source", "change"}),
		commitErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_source_commit_errors_total",
			Help: "Offset commits that failed; the offsets are committed again at the next commit.",
		}, []string{"source"}),
		partitions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_source_partitions",
			Help: "Partitions this relay owns in its consumer group.",
		}, []string{"source"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_source_paused",
			Help: "1 while fetching is paused because the spool is full.",
		}, []string{"source"}),
	}
	for _, name := range names {
		for _, o := range []string{outcomeStored, outcomeInvalid} {
			m.records.WithLabelValues(name, o)
		}
		for _, c := range []string{changeAssigned, changeRevoked, changeLost} {
			m.rebalances.WithLabelValues(name, c)
		}
		m.commitErrors.WithLabelValues(name)
		m.partitions.WithLabelValues(name)
		m.paused.WithLabelValues(name)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.records, m.rebalances, m.commitErrors, m.partitions, m.paused,
		&lagCollector{g: g}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var lagDesc = prometheus.NewDesc("spillway_source_commit_lag_records",
	"Records in the partitions this relay owns past the group's committed offsets, as of the last fetch's high watermarks: what is still to take, plus what is taken and not yet committed.",
	[]string{"source"}, nil)

// lagCollector computes the lag at scrape time from the client's committed
// offsets and the high watermarks of the last fetches. The group's sources
// are all built before New returns, hence before any scrape.
type lagCollector struct{ g *Group }

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagDesc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.g.srcs {
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, float64(s.commitLag()), s.name)
	}
}
