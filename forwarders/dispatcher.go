package forwarders

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillwayhq/spillway/internal/privacy"
	"github.com/spillwayhq/spillway/spool"
)

// store is what a Dispatcher needs of the spool; *spool.Spool implements it.
type store interface {
	ReadInto(consumer string, recs []spool.Record, arena []byte, maxEvents, maxBytes int) ([]spool.Record, []byte, error)
	Changed() <-chan struct{}
	Ack(consumer string, upTo uint64) error
	Position(consumer string) uint64
	Rewind(consumer string) error
	Backlog(consumer string) spool.Backlog
	DeadLetter(ctx context.Context, dls []spool.DeadLetter) error
}

// Log attribute keys.
const (
	keyDestination = "destination"
	keyKind        = "kind"
	keyState       = "state"
	keyError       = "err"
	keyRetryIn     = "retry_in"
	keyDownFor     = "down_for"
	keyAttempts    = "failed_attempts"
	keyReason      = "reason"
	keyEvents      = "events"
)

// Dispatcher is the delivery loop of one destination: it reads through the
// destination's own spool cursor, batches, sends through its Forwarder,
// classifies the outcome, retries, dead-letters, and acknowledges. It is
// created and run by a Group; dispatchers share nothing but the spool, so
// one destination's trouble never delays another.
type Dispatcher struct {
	dest  Destination
	fwd   Forwarder
	sp    store
	log   *slog.Logger
	gate  *gate
	route *router // used by run only
	lanes *lanes  // nil unless the destination delivers per write key (lanes.go)
	// privacy holds the destination's own privacy rules, applied to each
	// event as it is taken into a batch; nil for none.
	privacy *privacy.Rules
	spawn   func(func())

	mDelivered    prometheus.Counter
	mDeadLettered map[string]prometheus.Counter
	mRetries      map[string]prometheus.Counter
	mDuration     prometheus.Observer
	mUp           prometheus.Gauge

	delivered, retried, deadLettered atomic.Int64

	mu         sync.Mutex
	lastErr    string
	lastErrAt  time.Time
	lastFail   error          // the failure that made the destination not up; nil while up
	dlUnlogged map[string]int // dead letters not yet logged, by reason
	dlLoggedAt time.Time      // when dead letters were last logged
	dlHeld     chan struct{}  // wakes run, which does the logging, when some are counted

	drain     chan struct{} // closed by Group.Shutdown
	drained   chan struct{} // closed once drain is asked and nothing is left
	drainOnce sync.Once
}

func newDispatcher(d Destination, fwd Forwarder, sp store, log *slog.Logger, m *metrics, spawn func(func())) *Dispatcher {
	dp := &Dispatcher{
		dest:          d,
		fwd:           fwd,
		sp:            sp,
		log:           log.With(keyDestination, d.Name, keyKind, d.Kind),
		gate:          newGate(d.BackoffMin, d.BackoffMax),
		route:         newRouter(d),
		spawn:         spawn,
		mDelivered:    m.delivered.WithLabelValues(d.Name),
		mDuration:     m.duration.WithLabelValues(d.Name),
		mUp:           m.up.WithLabelValues(d.Name),
		mDeadLettered: map[string]prometheus.Counter{},
		mRetries:      map[string]prometheus.Counter{},
		dlUnlogged:    map[string]int{},
		dlHeld:        make(chan struct{}, 1),
		drain:         make(chan struct{}),
		drained:       make(chan struct{}),
	}
	for _, r := range deadLetterReasons {
		dp.mDeadLettered[r] = m.deadLettered.WithLabelValues(d.Name, r)
	}
	for _, r := range retryReasons {
		dp.mRetries[r] = m.retries.WithLabelValues(d.Name, r)
	}
	return dp
}

// DestinationStatus is one row of `spillway status`.
type DestinationStatus struct {
	Name          string  `json:"name"`
	Kind          string  `json:"kind"`
	State         State   `json:"state"`
	BacklogEvents int64   `json:"backlog_events"`
	LagSeconds    float64 `json:"lag_seconds"`
	Delivered     int64   `json:"delivered"`
	Retried       int64   `json:"retried"`
	DeadLettered  int64   `json:"dead_lettered"`
	LastError     string  `json:"last_error,omitempty"`
	// LastErrorAt is when LastError happened: it stays after the
	// destination has recovered.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// LanesNotUp counts the write keys whose lane is failing or
	// misconfigured; Lanes lists the most backlogged lanes (see lanes.go).
	// BacklogEvents and LagSeconds include the lanes' events.
	LanesNotUp int          `json:"lanes_not_up,omitempty"`
	Lanes      []LaneStatus `json:"lanes,omitempty"`
}

// Status reports the destination's state and counters since start.
func (d *Dispatcher) Status() DestinationStatus {
	b := d.sp.Backlog(d.dest.Name)
	d.mu.Lock()
	lastErr, lastErrAt := d.lastErr, d.lastErrAt
	d.mu.Unlock()
	st := DestinationStatus{
		Name:          d.dest.Name,
		Kind:          d.dest.Kind,
		State:         d.gate.current(),
		BacklogEvents: b.Events,
		LagSeconds:    lagOf(b, time.Now()),
		Delivered:     d.delivered.Load(),
		Retried:       d.retried.Load(),
		DeadLettered:  d.deadLettered.Load(),
		LastError:     lastErr,
		LastErrorAt:   lastErrAt,
	}
	if d.lanes != nil {
		d.lanes.addStatus(&st, b, time.Now())
	}
	return st
}

func (d *Dispatcher) deliveredN(n int) {
	if n == 0 {
		return
	}
	d.delivered.Add(int64(n))
	d.mDelivered.Add(float64(n))
}

func (d *Dispatcher) retry(reason string) {
	d.retried.Add(1)
	d.mRetries[reason].Inc()
}

// failure is the destination's current failure; nil while it is up.
func (d *Dispatcher) failure() error {
	if d.gate.current() == StateUp {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastFail
}

func (d *Dispatcher) setLastErr(err error) {
	d.mu.Lock()
	d.lastErr, d.lastErrAt = truncate(err.Error(), errorBodyLimit), time.Now().UTC()
	d.mu.Unlock()
}

// report logs a change of state, the only thing a dispatcher logs about
// delivery.
func (d *Dispatcher) report(tr transition, changed bool) {
	if !changed {
		return
	}
	if tr.to == StateUp {
		d.mUp.Set(1)
		d.log.Info("destination recovered", keyState, tr.to, keyDownFor, tr.downFor.Round(time.Millisecond),
			keyAttempts, tr.fails)
		return
	}
	d.mUp.Set(0)
	if tr.to == StateMisconfigured {
		d.log.Error("destination misconfigured: check its URL and credentials; retrying every backoff_max",
			keyState, tr.to, keyError, tr.err, keyRetryIn, tr.wait.Round(time.Millisecond))
		return
	}
	d.log.Warn("destination failing; its batches wait for it", keyState, tr.to, keyError, tr.err,
		keyRetryIn, tr.wait.Round(time.Millisecond))
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// sleep waits for d or ctx; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
