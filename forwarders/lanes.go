package forwarders

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// Lanes are Centrifuge's virtual queues, one per (destination, write key),
// made cheap by keeping a key's lane empty while the key is up: every
// event travels the destination's main stream, and only the events of a
// key the destination refuses to take right now (an HTTP answer of 401,
// 403, 404, 408, 429 or 5xx to a request under that key alone) leave it.
// They are parked in the spool's lane log for that key, durably, before
// the main cursor's acknowledgement covers them, and the destination's
// main stream goes on at full rate with the other keys. While a key has a
// lane, its new events are parked behind the old ones, so each key stays
// in order. One drainer per destination retries the lanes, one batch per
// lane at a time, round-robin, on each key's own backoff; a lane that is
// delivered again and empty is removed, and its key flows in the main
// stream again. Memory holds one small struct per lane, never its events.
//
// A failure that is not a key's (a network error, a timeout, Kafka's
// errors, which concern the brokers or the topic) stays the destination's:
// its gate holds every batch, as without lanes.

// Values of ?lanes=.
const (
	LanesWriteKey = "write_key"
	LanesOff      = "off"
)

func parseLanes(kind, val string) (string, error) {
	if kind != KindSegment && kind != KindWebhook && kind != KindKafka {
		return "", errors.New("only a segment, http(s) or kafka destination takes lanes")
	}
	if val != LanesWriteKey && val != LanesOff {
		return "", fmt.Errorf("want write_key or off, got %q", val)
	}
	return val, nil
}

// lanesOn says whether d delivers per write key in lanes.
func (d Destination) lanesOn() bool {
	switch d.Lanes {
	case LanesWriteKey:
		return true
	case LanesOff:
		return false
	}
	return d.Kind == KindSegment && d.WriteKey == ""
}

// laneStore is what lanes need of the spool; *spool.Spool implements it.
type laneStore interface {
	Park(consumer, writeKey string, recs []spool.Record) (int, error)
	ReadLane(consumer, writeKey string, from, below uint64, recs []spool.Record, maxEvents, maxBytes int) ([]spool.Record, error)
	Unpark(consumer, writeKey string, recs []spool.Record) error
	Lanes(consumer string) ([]spool.Parked, error)
}

var _ laneStore = (*spool.Spool)(nil)

// lane is one write key's queue while it is not flowing in the main stream.
type lane struct {
	key       string
	state     State
	since     time.Time // when state was entered
	fails     int       // failed attempts in a row
	next      time.Time // no send before this
	lastErr   error
	lastErrAt time.Time
	parked    int64     // events in the lane log
	parking   int       // parks begun and not yet durable
	firstSeq  uint64    // nothing is parked below it
	oldest    time.Time // no parked event was stored before it
	busy      bool      // the drainer has an attempt in flight
}

// lanes is a destination's set of lanes and its drainer.
type lanes struct {
	d  *Dispatcher
	sp laneStore

	mu    sync.Mutex
	byKey map[string]*lane
	order []*lane // the drainer's round-robin
	turn  int     // where the drainer's next round starts in order

	count atomic.Int64 // len(byKey), read without the lock by the main stream
	// acked is the main stream's acknowledged position: every park below
	// it is durable, so a lane drains only below it and never passes an
	// earlier event of its key still being parked by a batch in flight.
	acked atomic.Uint64
	wake  chan struct{}
	// mainDrained is closed once the destination drains for shutdown and
	// its main stream is caught up: the drainer then closes the
	// destination's drained when no lane has a batch to send now.
	mainDrained     chan struct{}
	mainDrainedOnce sync.Once

	// allDown is the destination's state as its keys say: not up when
	// sends delivered nothing because every key in them failed (the one
	// key of a sidecar, say), until a send delivers again. It is what
	// status, the up metric and the logs report while the gate is up; it
	// holds no batch back. down mirrors allDown != StateUp, read without
	// the lock.
	allDown   State
	downSince time.Time
	downFails int
	down      atomic.Bool

	// held counts the parked events the drainer has read and not yet
	// let go of, and peakHeld its highest value: the lanes' memory, which
	// concurrency and batch size bound whatever the number of lanes.
	held, peakHeld atomic.Int64
}

// newLanes restores d's lanes from the spool's lane log.
func newLanes(d *Dispatcher, sp laneStore, acked uint64) (*lanes, error) {
	l := &lanes{d: d, sp: sp, byKey: map[string]*lane{}, wake: make(chan struct{}, 1), allDown: StateUp,
		mainDrained: make(chan struct{})}
	l.acked.Store(acked)
	parked, err := sp.Lanes(d.dest.Name)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %w", d.dest.Name, err)
	}
	now := time.Now()
	for _, p := range parked {
		// Up until a send says otherwise: the drainer tries it at once.
		ln := l.open(p.WriteKey, now)
		ln.parked, ln.firstSeq, ln.oldest = p.Events, p.FirstSeq, p.Oldest
	}
	return l, nil
}

// open returns key's lane, creating it. Called with mu held.
func (l *lanes) open(key string, now time.Time) *lane {
	if ln := l.byKey[key]; ln != nil {
		return ln
	}
	ln := &lane{key: key, state: StateUp, since: now}
	l.byKey[key] = ln
	l.order = append(l.order, ln)
	l.count.Store(int64(len(l.byKey)))
	return ln
}

// closeIfDone removes a lane that is up and empty: its key flows in the
// main stream again. Every event of the key parked so far is delivered,
// so none can be passed. Called with mu held.
func (l *lanes) closeIfDone(ln *lane) {
	if ln.parked > 0 || ln.parking > 0 || ln.busy || ln.state != StateUp {
		return
	}
	delete(l.byKey, ln.key)
	if i := slices.Index(l.order, ln); i >= 0 {
		l.order = slices.Delete(l.order, i, i+1)
		if l.turn > i {
			l.turn--
		}
	}
	l.count.Store(int64(len(l.byKey)))
}

func (l *lanes) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// ackedTo records the main stream's acknowledged position.
func (l *lanes) ackedTo(upTo uint64) {
	if upTo > l.acked.Load() {
		l.acked.Store(upTo)
		if l.count.Load() > 0 {
			l.poke()
		}
	}
}

// keyGroup is some records of one key, to park.
type keyGroup struct {
	ln   *lane
	recs []spool.Record
}

// divert takes out of recs, a batch about to be sent, the events of keys
// that have a lane, parks them, and returns the others. false means ctx
// ended before they were parked.
func (l *lanes) divert(ctx context.Context, recs []spool.Record) ([]spool.Record, bool) {
	if l.count.Load() == 0 {
		return recs, true
	}
	var (
		rest   []spool.Record
		groups []keyGroup
	)
	l.mu.Lock()
	for i := range recs {
		ln := l.byKey[recs[i].WriteKey]
		if ln == nil {
			rest = append(rest, recs[i])
			continue
		}
		j := slices.IndexFunc(groups, func(g keyGroup) bool { return g.ln == ln })
		if j < 0 {
			ln.parking++
			groups = append(groups, keyGroup{ln: ln})
			j = len(groups) - 1
		}
		groups[j].recs = append(groups[j].recs, recs[i])
	}
	l.mu.Unlock()
	if len(groups) == 0 {
		return recs, true
	}
	return rest, l.park(ctx, groups)
}

// parkFailed parks parts that failed under their key alone, after opening
// or failing their key's lane. false means ctx ended first.
func (l *lanes) parkFailed(ctx context.Context, parts []part) bool {
	now := time.Now()
	groups := make([]keyGroup, 0, len(parts))
	l.mu.Lock()
	for _, p := range parts {
		ln := l.open(p.recs[0].WriteKey, now)
		if ln.state == StateUp {
			// Batches in flight when the key went down fail together
			// and say nothing new: only the first one backs off.
			l.fail(ln, p.lastErr, now)
		}
		ln.parking++
		groups = append(groups, keyGroup{ln: ln, recs: p.recs})
	}
	l.mu.Unlock()
	return l.park(ctx, groups)
}

// park makes each group durable in its lane, retrying until the spool
// takes it, as dead letters are: the batch must not be acknowledged before.
func (l *lanes) park(ctx context.Context, groups []keyGroup) bool {
	d := l.d
	for i, g := range groups {
		var added int
		for fails := 1; ; fails++ {
			var err error
			if added, err = l.sp.Park(d.dest.Name, g.ln.key, g.recs); err == nil {
				break
			}
			if ctx.Err() == nil && fails == 1 {
				d.log.Error("park events failed; retrying", keyError, err, keyEvents, len(g.recs))
				d.setLastErr(fmt.Errorf("park events: %w", err))
			}
			if ctx.Err() != nil || !sleep(ctx, jitter(d.dest.BackoffMin, d.dest.BackoffMax, fails, 0)) {
				l.mu.Lock()
				for _, g := range groups[i:] {
					g.ln.parking--
					l.closeIfDone(g.ln)
				}
				l.mu.Unlock()
				return false
			}
		}
		l.mu.Lock()
		g.ln.parking--
		g.ln.parked += int64(added)
		first, oldest := g.recs[0].Seq, g.recs[0].Stored
		for _, r := range g.recs[1:] {
			first = min(first, r.Seq)
			if r.Stored.Before(oldest) {
				oldest = r.Stored
			}
		}
		if g.ln.parked == int64(added) {
			g.ln.firstSeq, g.ln.oldest = first, oldest // it was empty
		}
		g.ln.firstSeq = min(g.ln.firstSeq, first)
		if g.ln.oldest.IsZero() || oldest.Before(g.ln.oldest) {
			g.ln.oldest = oldest
		}
		l.mu.Unlock()
	}
	l.poke()
	return true
}

// keyFailure says whether p failed under its own key: one key, and an
// HTTP answer that is not a rejection of the data.
func keyFailure(p part) bool {
	var (
		se  *statusError
		rej *RejectedError
	)
	if p.fails == 0 || len(p.recs) == 0 || errors.As(p.lastErr, &rej) || !errors.As(p.lastErr, &se) {
		return false
	}
	return sameWriteKey(p.recs)
}

// takeKeyFailures moves out of v the parts that failed under their key
// alone and returns them; what is left of v's failure is the
// destination's.
func takeKeyFailures(v *verdict) []part {
	if !slices.ContainsFunc(v.redo, keyFailure) {
		return nil
	}
	var keyed []part
	kept := v.redo[:0]
	for _, p := range v.redo {
		if keyFailure(p) {
			keyed = append(keyed, p)
		} else {
			kept = append(kept, p)
		}
	}
	v.redo = kept
	v.failure, v.misconfigured, v.after = nil, false, 0
	for _, p := range kept {
		var (
			rej *RejectedError
			mis *MisconfiguredError
			ret *RetryableError
		)
		switch {
		case p.fails == 0 || errors.As(p.lastErr, &rej):
		case errors.As(p.lastErr, &mis):
			if !v.misconfigured {
				v.failure, v.misconfigured = p.lastErr, true
			}
		default:
			if errors.As(p.lastErr, &ret) {
				v.after = max(v.after, ret.After)
			}
			if v.failure == nil {
				v.failure = p.lastErr
			}
		}
	}
	return keyed
}

// fail records a failed attempt of ln's key. Called with mu held.
func (l *lanes) fail(ln *lane, err error, now time.Time) {
	var (
		mis *MisconfiguredError
		ret *RetryableError
	)
	from := ln.state
	ln.fails++
	ln.lastErr, ln.lastErrAt = err, now.UTC()
	switch {
	case errors.As(err, &mis):
		ln.state, ln.next = StateMisconfigured, now.Add(l.d.dest.BackoffMax)
	default:
		var after time.Duration
		if errors.As(err, &ret) {
			after = ret.After
		}
		ln.state, ln.next = StateFailing, now.Add(jitter(l.d.dest.BackoffMin, l.d.dest.BackoffMax, ln.fails, after))
	}
	if ln.state == from {
		return
	}
	if from == StateUp {
		ln.since = now
	}
	key := spool.MaskWriteKey(ln.key)
	if ln.state == StateMisconfigured {
		l.d.log.Error("write key misconfigured for this destination: its events wait in its lane, retried every backoff_max",
			keyWriteKey, key, keyError, err)
		return
	}
	l.d.log.Warn("write key failing: its events wait in its lane", keyWriteKey, key, keyError, err,
		keyRetryIn, ln.next.Sub(now).Round(time.Millisecond))
}

// succeed records a delivered attempt of ln's key. Called with mu held.
func (l *lanes) succeed(ln *lane, now time.Time) {
	if ln.state != StateUp {
		l.d.log.Info("write key recovered: its lane drains", keyWriteKey, spool.MaskWriteKey(ln.key),
			keyDownFor, now.Sub(ln.since).Round(time.Millisecond), keyAttempts, ln.fails)
		ln.state, ln.since = StateUp, now
	}
	ln.fails, ln.next = 0, time.Time{}
}

const keyWriteKey = "write_key"

// outcome records what a send delivered, and the parts of it that failed
// under their keys: a send that delivered nothing and failed for keys says
// the destination is down for every key it has, as far as anyone can tell.
func (l *lanes) outcome(delivered int, keyed []part) {
	if delivered > 0 {
		if l.down.Load() {
			l.markUp()
		}
		return
	}
	if len(keyed) == 0 {
		return
	}
	var (
		mis   *MisconfiguredError
		state = StateFailing
		cause = keyed[0].lastErr
	)
	for _, p := range keyed {
		if errors.As(p.lastErr, &mis) {
			state, cause = StateMisconfigured, p.lastErr
			break
		}
	}
	now := time.Now()
	l.mu.Lock()
	from := l.allDown
	l.downFails++
	if from == state {
		l.mu.Unlock()
		return
	}
	if from == StateUp {
		l.downSince = now
	}
	l.allDown = state
	l.down.Store(true)
	l.mu.Unlock()
	l.d.report(transition{from: from, to: state, err: cause, fails: l.downFails}, true)
}

func (l *lanes) markUp() {
	now := time.Now()
	l.mu.Lock()
	if l.allDown == StateUp {
		l.mu.Unlock()
		return
	}
	tr := transition{from: l.allDown, to: StateUp, downFor: now.Sub(l.downSince), fails: l.downFails}
	l.allDown, l.downFails = StateUp, 0
	l.down.Store(false)
	l.mu.Unlock()
	l.d.report(tr, true)
}

// perKeyForwarder sends one request per write key, so that a kind that
// puts many keys in one request (a webhook) gets answers that are a key's
// own. The segment kind does so already.
type perKeyForwarder struct{ Forwarder }

func (f perKeyForwarder) Send(ctx context.Context, batch []spool.Record) error {
	if sameWriteKey(batch) {
		return f.Forwarder.Send(ctx, batch)
	}
	return sendPerKey(ctx, batch, func(ctx context.Context, _ string, recs []spool.Record) error {
		return f.Forwarder.Send(ctx, recs)
	})
}

func countRecs(parts []part) int {
	n := 0
	for _, p := range parts {
		n += len(p.recs)
	}
	return n
}
