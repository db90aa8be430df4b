// Package loadreport is the JSON line the load generator prints and the
// benchmark runner reads: one definition for both.
package loadreport

// Result is the JSON line on stdout. Counts and latencies cover the
// measurement window (after the warm-up) unless named total_*.
type Result struct {
	URL             string         `json:"url"`
	Endpoint        string         `json:"endpoint"`
	Conns           int            `json:"conns"`
	Rate            float64        `json:"rate_events_per_s"`
	WindowStartNs   int64          `json:"window_start_ns"`
	WindowEndNs     int64          `json:"window_end_ns"`
	WindowS         float64        `json:"window_s"`
	Requests        uint64         `json:"requests"`
	RequestsOK      uint64         `json:"requests_ok"`
	EventsOK        uint64         `json:"events_ok"`
	ReqPerS         float64        `json:"requests_ok_per_s"`
	EventsPerS      float64        `json:"events_ok_per_s"`
	Statuses        map[string]int `json:"non_200,omitempty"`
	Errors          map[string]int `json:"errors,omitempty"`
	P50ms           float64        `json:"p50_ms"`
	P90ms           float64        `json:"p90_ms"`
	P99ms           float64        `json:"p99_ms"`
	MaxMs           float64        `json:"max_ms"`
	RawEventBytesOK uint64         `json:"raw_event_bytes_ok"`
	EventBytesAvg   float64        `json:"event_bytes_avg"`
	BodyBytesSent   uint64         `json:"body_bytes_sent"`
	TotalEventsOK   uint64         `json:"total_events_ok"`
	LateMaxMs       float64        `json:"late_max_ms,omitempty"`
}
