package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillwayhq/spillway/internal/segment"
)

type metrics struct {
	received [numEndpoints]prometheus.Counter
	rejected [segment.NumRules]prometheus.Counter
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
		Help: "Events that broke the Segment spec at ingest, by the rule broken.",
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
	m := &metrics{errors: make(map[string]prometheus.Counter, len(codes))}
	// Every known label value is created up front so that series exist at
	// 0 from the start and rate() sees the first increment.
	for ep := range numEndpoints {
		m.received[ep] = received.WithLabelValues(endpointNames[ep])
		m.duration[ep] = duration.WithLabelValues(endpointNames[ep])
	}
	for r := segment.RuleNotObject; r < segment.NumRules; r++ {
		m.rejected[r] = rejected.WithLabelValues(r.Code())
	}
	for _, c := range codes {
		m.errors[c] = errs.WithLabelValues(c)
	}
	return m, nil
}
