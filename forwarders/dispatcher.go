package forwarders

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
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
	spawn func(func())

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
}

// Status reports the destination's state and counters since start.
func (d *Dispatcher) Status() DestinationStatus {
	b := d.sp.Backlog(d.dest.Name)
	d.mu.Lock()
	lastErr, lastErrAt := d.lastErr, d.lastErrAt
	d.mu.Unlock()
	return DestinationStatus{
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
}

// slot is a launched batch's place in the acknowledgement order.
type slot struct {
	upTo uint64 // one past the last Seq the batch covers
	done bool
}

type result struct {
	slot *slot
	ok   bool
	mem  *batchMem
}

// batchMem is one batch's memory: its records, and their data copied
// straight into it from the spool. It is reused once the batch is done, so
// delivering allocates nothing per event; batches holding on to decoded
// spool blocks were most of what delivery allocated.
type batchMem struct {
	recs  []spool.Record
	arena []byte
}

// batchOverhead is counted in every batch's bytes besides its events (one
// separator byte each), so that no request body, in any format, outgrows
// batch_bytes: Segment's {"batch":[...],"sentAt":"..."} takes 45 bytes.
const batchOverhead = 64

// building is the batch being filled.
type building struct {
	mem   *batchMem // nil until the first read into it
	recs  []spool.Record
	bytes int // batchOverhead plus each event and its separator, once it has one
	upTo  uint64
	first time.Time // when its first record came: the flush clock
	full  bool
}

// run is the read loop. It alone touches the batch being built and the
// acknowledgement order; the batches in flight report back on results.
func (d *Dispatcher) run(ctx context.Context) {
	var (
		cur      building
		carry    []spool.Record // read but not yet in a batch; their data is in cur.mem
		readBuf  []spool.Record // what carry is read into
		free     []*batchMem    // memory of finished batches
		slots    []*slot        // launched batches, oldest first
		running  int
		results  = make(chan result, d.dest.Concurrency)
		idle     bool // the last Read found nothing
		changed  <-chan struct{}
		draining bool
		drain    = d.drain
		acked    uint64 // last successful Ack
		toAck    uint64 // what may be acknowledged
		ackFail  int    // consecutive Ack failures
		readFail int    // consecutive Read failures
		retryAt  time.Time
		timer    = time.NewTimer(time.Hour)
	)
	timer.Stop()
	defer timer.Stop()
	defer func() { d.logDeadLetters(time.Now(), true) }()

	for {
		// Fill the batch being built.
		for ctx.Err() == nil && !cur.full && (readFail == 0 || !time.Now().Before(retryAt)) {
			if len(carry) == 0 {
				changed = d.sp.Changed() // before Read, so no commit slips between
				budget := d.dest.BatchBytes - max(cur.bytes, batchOverhead)
				if cur.mem == nil {
					cur.mem, free = d.takeMem(free)
					cur.recs = cur.mem.recs[:0]
				}
				recs, arena, err := d.sp.ReadInto(d.dest.Name, readBuf[:0], cur.mem.arena, d.dest.BatchEvents-len(cur.recs), max(budget, 1))
				cur.mem.arena, readBuf = arena, recs
				carry = recs
				if err != nil {
					readFail++
					retryAt = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, readFail, 0))
					if readFail == 1 {
						d.log.Error("read from spool failed", keyError, err)
					}
					d.setLastErr(fmt.Errorf("read spool: %w", err))
				} else if readFail > 0 {
					readFail = 0
					d.log.Info("read from spool works again")
				}
				idle = len(recs) == 0
				if idle || err != nil {
					carry = d.take(&cur, carry, &slots)
					break
				}
			}
			carry = d.take(&cur, carry, &slots)
		}

		// Launch it if it is due and there is room: one batch at a time
		// until the destination has shown it is up.
		flushDue := len(cur.recs) > 0 &&
			(cur.full || draining || !time.Now().Before(cur.first.Add(d.dest.Flush)))
		room := running < d.dest.Concurrency && (running == 0 || d.gate.open())
		if flushDue && room && ctx.Err() == nil {
			s := &slot{upTo: cur.upTo}
			slots = append(slots, s)
			running++
			recs, mem := cur.recs, cur.mem
			mem.recs = recs // keep what append grew
			d.spawn(func() { results <- result{slot: s, ok: d.process(ctx, recs), mem: mem} })
			cur = building{}
			if len(carry) > 0 {
				// Records read past the full batch live in its memory.
				cur.mem, free = d.takeMem(free)
				cur.recs = cur.mem.recs[:0]
				cur.mem.arena = moveData(cur.mem.arena, carry)
			}
			continue
		}

		// Acknowledge the contiguous prefix of finished batches.
		n := 0
		for n < len(slots) && slots[n].done {
			toAck = slots[n].upTo
			n++
		}
		slots = slots[n:]
		if idle && readFail == 0 && running == 0 && len(slots) == 0 && len(cur.recs) == 0 && len(carry) == 0 {
			// Everything read is done: acknowledge up to the read position,
			// past events the spool skipped as meant for another destination.
			toAck = max(toAck, d.sp.Position(d.dest.Name))
		}
		if toAck > acked && (ackFail == 0 || !time.Now().Before(retryAt)) {
			if err := d.sp.Ack(d.dest.Name, toAck); err != nil {
				ackFail++
				retryAt = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, ackFail, 0))
				if ackFail == 1 {
					d.log.Error("acknowledge to spool failed", keyError, err)
				}
				d.setLastErr(fmt.Errorf("ack spool: %w", err))
			} else {
				if ackFail > 0 {
					d.log.Info("acknowledge to spool works again")
				}
				acked, ackFail = toAck, 0
			}
		}

		if draining && idle && readFail == 0 && ackFail == 0 && len(cur.recs) == 0 && len(carry) == 0 &&
			running == 0 && len(slots) == 0 {
			d.drainOnce.Do(func() { close(d.drained) })
		}

		// Wait for something to do.
		var deadline time.Time
		if len(cur.recs) > 0 && !flushDue {
			deadline = cur.first.Add(d.dest.Flush)
		}
		if (readFail > 0 && !cur.full) || (ackFail > 0 && toAck > acked) {
			if deadline.IsZero() || retryAt.Before(deadline) {
				deadline = retryAt
			}
		}
		if due := d.logDeadLetters(time.Now(), false); !due.IsZero() && (deadline.IsZero() || due.Before(deadline)) {
			deadline = due
		}
		var timerC <-chan time.Time
		if !deadline.IsZero() {
			timer.Reset(time.Until(deadline))
			timerC = timer.C
		}
		var changedC <-chan struct{}
		if idle && readFail == 0 && !cur.full {
			changedC = changed
		}
		select {
		case <-ctx.Done():
			for ; running > 0; running-- {
				r := <-results
				r.slot.done = r.ok
			}
			d.ackFinal(slots, acked, toAck)
			return
		case r := <-results:
			running--
			r.slot.done = r.ok
			// process has returned: nothing reads the batch's records now.
			free = d.putMem(free, r.mem)
		case <-changedC:
		case <-timerC:
		case <-d.dlHeld:
		case <-drain:
			draining, drain = true, nil
		}
		timer.Stop()
	}
}

// moveData copies the records' data into arena, points them at the copy,
// and returns arena grown by it.
func moveData(arena []byte, recs []spool.Record) []byte {
	for i := range recs {
		from := len(arena)
		arena = append(arena, recs[i].Data...)
		recs[i].Data = arena[from:len(arena):len(arena)]
	}
	return arena
}

// takeMem returns a finished batch's memory, or new memory sized for a
// whole batch: records point into the arena, so every array a growing
// arena left behind would stay alive as long as the batch.
func (d *Dispatcher) takeMem(free []*batchMem) (*batchMem, []*batchMem) {
	if n := len(free); n > 0 {
		m := free[n-1]
		free[n-1] = nil
		return m, free[:n-1]
	}
	return &batchMem{arena: make([]byte, 0, d.dest.BatchBytes+maxEventSlack)}, free
}

// maxEventSlack is room past batch_bytes: a read returns at least one
// event, and the one that fills a batch may overshoot it.
const maxEventSlack = 64 << 10

// putMem keeps a finished batch's memory for the next, up to one per
// batch in flight (no more than are alive at full load anyway; keeping
// one, the others became garbage, and collections cost 8% of W1's
// throughput), unless it outgrew the usual batch several times over.
func (d *Dispatcher) putMem(free []*batchMem, m *batchMem) []*batchMem {
	if len(free) >= d.dest.Concurrency || cap(m.arena) > 2*(d.dest.BatchBytes+maxEventSlack) {
		return free
	}
	clear(m.recs) // let go of write key strings
	m.recs, m.arena = m.recs[:0], m.arena[:0]
	return append(free, m)
}

// ackFinal acknowledges, at shutdown, what finished; batches cancelled
// midway stay unacknowledged and are sent again after a restart.
func (d *Dispatcher) ackFinal(slots []*slot, acked, toAck uint64) {
	for _, s := range slots {
		if !s.done {
			break
		}
		toAck = s.upTo
	}
	if toAck > acked {
		if err := d.sp.Ack(d.dest.Name, toAck); err != nil {
			d.log.Error("acknowledge to spool failed at shutdown; those events will be sent again", keyError, err)
		}
	}
}

// take moves records from carry into the batch being built, until it is
// full, and returns what is left. Records the destination does not want
// are done at once: they ride with the batch being built, or, when there
// is none, take a finished slot of their own.
func (d *Dispatcher) take(cur *building, carry []spool.Record, slots *[]*slot) []spool.Record {
	for i := range carry {
		r := &carry[i]
		if !d.route.wants(r.Data) {
			if len(cur.recs) > 0 {
				cur.upTo = r.Seq + 1
				continue
			}
			if n := len(*slots); n > 0 && (*slots)[n-1].done {
				(*slots)[n-1].upTo = r.Seq + 1
			} else {
				*slots = append(*slots, &slot{upTo: r.Seq + 1, done: true})
			}
			continue
		}
		size := len(r.Data) + 1
		if len(cur.recs) > 0 && (len(cur.recs) >= d.dest.BatchEvents || cur.bytes+size > d.dest.BatchBytes) {
			cur.full = true
			return carry[i:]
		}
		if len(cur.recs) == 0 {
			cur.first = time.Now()
			cur.bytes = batchOverhead
		}
		cur.recs = append(cur.recs, *r)
		cur.bytes += size
		cur.upTo = r.Seq + 1
	}
	if len(cur.recs) >= d.dest.BatchEvents || cur.bytes >= d.dest.BatchBytes {
		cur.full = true
	}
	return nil
}

// part is some of a batch's records, sent together.
type part struct {
	recs     []spool.Record
	attempts int   // sends that included these records
	lastErr  error // the last send's failure, for an expiry's dead letter
	// fails counts the part's own consecutive failures, and notBefore is
	// its own backoff: even when another batch's success has reopened the
	// gate, a failed part waits out its backoff and any Retry-After.
	fails     int
	notBefore time.Time
}

// process delivers one batch to the end: every record delivered or
// dead-lettered. It returns false when ctx ended first; the batch is then
// left unacknowledged, to be sent again after a restart.
func (d *Dispatcher) process(ctx context.Context, recs []spool.Record) bool {
	todo := []part{{recs: recs}} // a stack: the batch's front is on top
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]

		var ok bool
		if p.recs, ok = d.expire(ctx, p); !ok {
			return false
		}
		if len(p.recs) == 0 {
			continue
		}
		probe, err := d.gate.acquire(ctx, p.notBefore, d.expiryOf(p.recs))
		if errors.Is(err, errExpiryDue) {
			todo = append(todo, p)
			continue
		}
		if err != nil {
			return false
		}
		start := time.Now()
		err = d.fwd.Send(ctx, p.recs)
		d.mDuration.Observe(time.Since(start).Seconds())
		p.attempts++
		if err != nil && ctx.Err() != nil {
			d.gate.abandon(probe)
			return false
		}
		redo, ok := d.settle(ctx, probe, p, err)
		if !ok {
			return false
		}
		for i := len(redo) - 1; i >= 0; i-- {
			todo = append(todo, redo[i])
		}
	}
	return true
}

// settle acts on a send's outcome and returns the parts to send again, in
// order. false means ctx ended while storing dead letters.
func (d *Dispatcher) settle(ctx context.Context, probe bool, p part, err error) ([]part, bool) {
	if err == nil {
		d.deliveredN(len(p.recs))
		d.report(d.gate.success(probe))
		return nil, true
	}
	var (
		redo    []part
		dead    []spool.DeadLetter
		failure error // the first retryable or misconfigured failure
		misconf bool
		after   time.Duration
	)
	judge := func(p part, err error) {
		var (
			rej *RejectedError
			mis *MisconfiguredError
			ret *RetryableError
		)
		p.lastErr = err
		switch {
		case errors.As(err, &rej):
			if len(p.recs) == 1 {
				dead = append(dead, d.deadLetter(p.recs[0], spool.ReasonRejected, rej.Status, rejectText(rej), p.attempts))
				return
			}
			// Halve until the refused events are alone: log2(n) extra
			// sends per refused event, and every other event delivered.
			// The destination answered, so the halves go at once.
			h := len(p.recs) / 2
			redo = append(redo, part{recs: p.recs[:h:h], attempts: p.attempts, lastErr: err},
				part{recs: p.recs[h:], attempts: p.attempts, lastErr: err})
			d.retry(reasonRejected)
		case errors.As(err, &mis):
			p.fails++
			p.notBefore = time.Now().Add(d.dest.BackoffMax)
			redo = append(redo, p)
			d.retry(reasonMisconfigured)
			if failure == nil || !misconf {
				failure, misconf = err, true
			}
		default:
			var wait time.Duration
			if errors.As(err, &ret) {
				wait = ret.After
				after = max(after, ret.After)
			}
			p.fails++
			p.notBefore = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, p.fails, wait))
			redo = append(redo, p)
			d.retry(retryReason(err))
			if failure == nil {
				failure = err
			}
		}
	}

	var be *BatchError
	switch {
	case errors.As(err, &be) && len(be.Errs) == len(p.recs):
		delivered := 0
		for _, g := range groupFailures(be.Errs) {
			if g.err == nil {
				delivered += len(g.idx)
				continue
			}
			judge(part{recs: pick(p.recs, g.idx), attempts: p.attempts, fails: p.fails}, g.err)
		}
		d.deliveredN(delivered)
	case be != nil:
		// Which records failed is unknown: nothing may be dead-lettered
		// on its word, so the whole part is retried.
		judge(p, &RetryableError{Err: fmt.Errorf("forwarder returned %d errors for %d records: %v",
			len(be.Errs), len(p.recs), err)})
	default:
		judge(p, err)
	}

	if failure != nil {
		d.setLastErr(failure)
		d.mu.Lock()
		d.lastFail = failure
		d.mu.Unlock()
		d.report(d.gate.failure(probe, failure, misconf, after))
	} else {
		d.setLastErr(err) // a rejection: the destination is fine, the data is not
		d.report(d.gate.success(probe))
	}
	if len(dead) > 0 && !d.storeDead(ctx, dead, spool.ReasonRejected) {
		return nil, false
	}
	return redo, true
}

type failureGroup struct {
	idx []int
	err error
}

// groupFailures groups a BatchError's records by error: records that share
// one error value failed in one request (a Segment request under one write
// key), so a shared *RejectedError is split like a whole batch's rather
// than condemning each of them. Groups keep the batch's order.
func groupFailures(errs []error) []failureGroup {
	var gs []failureGroup
	for i, err := range errs {
		j := len(gs) - 1
		for ; j >= 0; j-- {
			if sameError(gs[j].err, err) {
				break
			}
		}
		if j < 0 {
			gs = append(gs, failureGroup{err: err})
			j = len(gs) - 1
		}
		gs[j].idx = append(gs[j].idx, i)
	}
	return gs
}

// expire dead-letters the part's events older than max_age and returns the
// rest. false means ctx ended while storing them.
func (d *Dispatcher) expire(ctx context.Context, p part) ([]spool.Record, bool) {
	cutoff := time.Now().Add(-d.dest.MaxAge)
	n := 0
	for i := range p.recs {
		if !p.recs[i].Stored.After(cutoff) {
			n++
		}
	}
	if n == 0 {
		return p.recs, true
	}
	msg := "not delivered within max_age " + d.dest.MaxAge.String()
	last := p.lastErr
	if last == nil {
		// Never sent: waiting behind the destination's failure, which is
		// what the operator needs to see.
		last = d.failure()
	}
	if last != nil {
		msg = truncate(msg+"; last error: "+last.Error(), errorBodyLimit)
	}
	status := statusOf(last)
	dead := make([]spool.DeadLetter, 0, n)
	rest := make([]spool.Record, 0, len(p.recs)-n)
	for _, r := range p.recs {
		if !r.Stored.After(cutoff) {
			dead = append(dead, d.deadLetter(r, spool.ReasonExpired, status, msg, p.attempts))
		} else {
			rest = append(rest, r)
		}
	}
	if !d.storeDead(ctx, dead, spool.ReasonExpired) {
		return nil, false
	}
	return rest, true
}

// expiryOf is when the first of recs reaches max_age.
func (d *Dispatcher) expiryOf(recs []spool.Record) time.Time {
	oldest := recs[0].Stored
	for _, r := range recs[1:] {
		if r.Stored.Before(oldest) {
			oldest = r.Stored
		}
	}
	return oldest.Add(d.dest.MaxAge)
}

func (d *Dispatcher) deadLetter(r spool.Record, reason string, status int, msg string, attempts int) spool.DeadLetter {
	return spool.DeadLetter{
		Destination: d.dest.Name,
		Reason:      reason,
		Status:      status,
		Attempts:    attempts,
		Error:       msg,
		At:          time.Now(),
		WriteKey:    r.WriteKey,
		Event:       r.Data,
	}
}

// storeDead writes dead letters, retrying until the spool takes them: the
// events must not be acknowledged before they are safe elsewhere. false
// means ctx ended first.
func (d *Dispatcher) storeDead(ctx context.Context, dead []spool.DeadLetter, reason string) bool {
	for fails := 1; ; fails++ {
		err := d.sp.DeadLetter(ctx, dead)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		if fails == 1 {
			d.log.Error("store dead letters failed; retrying", keyError, err, keyEvents, len(dead))
		}
		d.setLastErr(fmt.Errorf("store dead letters: %w", err))
		if !sleep(ctx, jitter(d.dest.BackoffMin, d.dest.BackoffMax, fails, 0)) {
			return false
		}
	}
	d.deadLettered.Add(int64(len(dead)))
	d.mDeadLettered[reason].Add(float64(len(dead)))
	d.holdDeadLetters(reason, len(dead))
	return true
}

// holdDeadLetters counts n dead letters for logDeadLetters and wakes run to
// log them.
func (d *Dispatcher) holdDeadLetters(reason string, n int) {
	d.mu.Lock()
	d.dlUnlogged[reason] += n
	d.mu.Unlock()
	select {
	case d.dlHeld <- struct{}{}:
	default: // run is woken already
	}
}

// deadLetterLogEvery is the least time between two logs of a destination's
// dead letters: a line per event would flood the log when a destination
// refuses much of the traffic, and the metric counts every one anyway.
const deadLetterLogEvery = time.Minute

// logDeadLetters logs the dead letters counted since the last log, one
// line per reason with their number, unless the last log was less than
// deadLetterLogEvery ago: it then returns when they are due, for run to wake up and
// log them then rather than when the next dead letter comes, which may be
// hours later. final logs them whatever the time, at shutdown. Called by
// run only, so that what is held back always has a timer waiting for it.
func (d *Dispatcher) logDeadLetters(now time.Time, final bool) time.Time {
	d.mu.Lock()
	if len(d.dlUnlogged) == 0 {
		d.mu.Unlock()
		return time.Time{}
	}
	if due := d.dlLoggedAt.Add(deadLetterLogEvery); !final && now.Before(due) {
		d.mu.Unlock()
		return due
	}
	counts := d.dlUnlogged
	d.dlUnlogged = map[string]int{}
	d.dlLoggedAt = now
	d.mu.Unlock()
	for _, r := range deadLetterReasons {
		if n := counts[r]; n > 0 {
			d.log.Error("events dead-lettered", keyReason, r, keyEvents, n)
		}
	}
	return time.Time{}
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

func rejectText(e *RejectedError) string {
	if e.Body != "" {
		return truncate(e.Body, errorBodyLimit)
	}
	return truncate(e.Error(), errorBodyLimit)
}

// statusOf is the HTTP status err carries, or 0.
func statusOf(err error) int {
	var (
		rej *RejectedError
		mis *MisconfiguredError
		se  *statusError
	)
	switch {
	case err == nil:
		return 0
	case errors.As(err, &rej):
		return rej.Status
	case errors.As(err, &mis):
		return mis.Status
	case errors.As(err, &se):
		return se.code
	}
	return 0
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
