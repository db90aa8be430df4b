package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillwayhq/spillway/internal/segment"
)

type metrics struct {
	received [numEndpoints]prometheus.Counter
	// rejected has a counter for every rejection code.
	rejected map[string]prometheus.Counter
	duration [numEndpoints]prometheus.Observer
	// errors has a counter for every code of answers.
	errors map[string]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spillway_events_received_total",
		Help: "Events stored by the ingestion endpoints, valid or dead-lettered as invalid.",
	}, []string{"endpoint"})
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spillway_events_rejected_total",
		Help: "Events dead-lettered at ingest: by the Segment spec rule broken, too_large, or violation (a tracking plan in block mode).",
	}, []string{"reason"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "spillway_request_duration_seconds",
		Help: "Time to answer an ingestion request, including the spool's fsync.",
		// Acks are fsync-bound: sub-millisecond to a few hundred ms.
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"endpoint"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spillway_request_errors_total",
		Help: "Ingestion requests answered with an error, by the answer's code.",
	}, []string{"code"})
	for _, c := range []prometheus.Collector{received, rejected, duration, errs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register proxy metrics: %w", err)
		}
	}
	codes := answerCodes()
	m := &metrics{errors: make(map[string]prometheus.Counter, len(codes)), rejected: map[string]prometheus.Counter{}}
	// Every known label value is created up front so that series exist at
	// 0 from the start and rate() sees the first increment.
	for ep := range numEndpoints {
		m.received[ep] = received.WithLabelValues(endpointNames[ep])
		m.duration[ep] = duration.WithLabelValues(endpointNames[ep])
	}
	for r := segment.RuleNotObject; r < segment.NumRules; r++ {
		m.rejected[r.Code()] = rejected.WithLabelValues(r.Code())
	}
	for _, c := range []string{codeTooLarge} {
		m.rejected[c] = rejected.WithLabelValues(c)
	}
	for _, c := range codes {
		m.errors[c] = errs.WithLabelValues(c)
	}
	return m, nil
}
