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
	// violations counts tracking plan violations by type and event: the
	// plan's event names, unplanned, or another event's type.
	violations *prometheus.CounterVec
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
	violations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spillway_tracking_plan_violations_total",
		Help: "Tracking plan violations of the events stored or dead-lettered, by type and event (the plan's event names, unplanned, or another event's type).",
	}, []string{"type", "event"})
	for _, c := range []prometheus.Collector{received, rejected, duration, errs, violations} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register proxy metrics: %w", err)
		}
	}
	codes := answerCodes()
	m := &metrics{errors: make(map[string]prometheus.Counter, len(codes)), rejected: map[string]prometheus.Counter{}, violations: violations}
	// Every known label value is created up front so that series exist at
	// 0 from the start and rate() sees the first increment.
	for ep := range numEndpoints {
		m.received[ep] = received.WithLabelValues(endpointNames[ep])
		m.duration[ep] = duration.WithLabelValues(endpointNames[ep])
	}
	for r := segment.RuleNotObject; r < segment.NumRules; r++ {
		m.rejected[r.Code()] = rejected.WithLabelValues(r.Code())
	}
	for _, c := range rejectionCodes {
		m.rejected[c] = rejected.WithLabelValues(c)
	}
	for _, c := range codes {
		m.errors[c] = errs.WithLabelValues(c)
	}
	return m, nil
}
