package forwarders

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// State is a destination's health as the dispatcher sees it.
type State string

const (
	StateUp            State = "up"            // batches go out at full concurrency
	StateFailing       State = "failing"       // retryable failures: one probe at a time, with backoff
	StateMisconfigured State = "misconfigured" // 401/403/404...: one probe every backoff_max
)

// errExpiryDue ends a wait for the gate when the waiting batch's oldest
// event reaches max_age, so that it is dead-lettered on time instead of
// after the destination's next backoff.
var errExpiryDue = errors.New("forwarders: expiry due")

// gate keeps a failing destination from being hammered: while it is up,
// every batch sends at once; once a send fails, the destination's batches
// wait, one of them probes after a backoff, and the first success lets
// them all go again.
type gate struct {
	min, max time.Duration

	mu      sync.Mutex
	state   State
	since   time.Time     // when state was entered
	fails   int           // failed attempts since the last success
	next    time.Time     // no probe before this
	probing bool          // a probe is in flight
	proven  bool          // a send has succeeded since start
	changed chan struct{} // closed and replaced when waiters should look again
}

// transition is a change of state, for the one log line it deserves.
type transition struct {
	from, to State
	err      error
	wait     time.Duration // until the next probe
	downFor  time.Duration // how long it was not up, when it recovers
	fails    int
}

func newGate(minWait, maxWait time.Duration) *gate {
	return &gate{min: minWait, max: maxWait, state: StateUp, since: time.Now(), changed: make(chan struct{})}
}

// acquire waits until the caller may send: not before notBefore (the
// part's own backoff), and then at once while up, or, while not up, when it
// holds the only probe and the destination's backoff has passed. probe
// says whether the caller holds the probe; it must report the outcome with
// success, failure or abandon. expiry, when not zero, ends the wait with
// errExpiryDue.
func (g *gate) acquire(ctx context.Context, notBefore, expiry time.Time) (probe bool, err error) {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		now := time.Now()
		if !expiry.IsZero() && !now.Before(expiry) {
			return false, errExpiryDue
		}
		hold := notBefore.Sub(now)
		wait := time.Duration(-1) // no timer: wait for the gate to change
		g.mu.Lock()
		switch {
		case hold > 0:
			wait = hold
		case g.state == StateUp:
			g.mu.Unlock()
			return false, nil
		case !g.probing:
			if wait = g.next.Sub(now); wait <= 0 {
				g.probing = true
				g.mu.Unlock()
				return true, nil
			}
		}
		wake := g.changed
		g.mu.Unlock()
		if !expiry.IsZero() && (wait < 0 || expiry.Sub(now) < wait) {
			wait = expiry.Sub(now)
		}
		var timeout <-chan time.Time
		if wait >= 0 {
			if t == nil {
				t = time.NewTimer(wait)
			} else {
				t.Reset(wait)
			}
			timeout = t.C
		}
		select {
		case <-wake:
		case <-timeout:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// success records a send the destination answered without a failure (a
// rejection of the data included: the destination itself is fine).
func (g *gate) success(probe bool) (transition, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.proven = true
	if probe {
		g.probing = false
	}
	if g.state == StateUp {
		return transition{}, false
	}
	now := time.Now()
	tr := transition{from: g.state, to: StateUp, downFor: now.Sub(g.since), fails: g.fails}
	g.state, g.since, g.fails, g.next = StateUp, now, 0, time.Time{}
	g.wakeLocked()
	return tr, true
}

// failure records a failed send. Only a probe's failure, or the first one
// while up, lengthens the backoff: sends that were already in flight when
// the destination went down fail together and say nothing new.
func (g *gate) failure(probe bool, err error, misconfigured bool, after time.Duration) (transition, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if probe {
		g.probing = false
	}
	now := time.Now()
	from := g.state
	switch {
	case misconfigured:
		// A fixed, slow period: the answer will not change until someone
		// fixes the configuration, so backing off further only delays
		// noticing the fix.
		g.fails++
		g.state, g.next = StateMisconfigured, now.Add(g.max)
	case probe || from == StateUp:
		g.fails++
		g.state, g.next = StateFailing, now.Add(g.backoff(g.fails, after))
	default:
		if after > 0 {
			g.next = maxTime(g.next, now.Add(min(after, g.max)))
		}
	}
	g.wakeLocked()
	if g.state == from {
		return transition{}, false
	}
	if from == StateUp {
		g.since = now
	}
	return transition{from: from, to: g.state, err: err, wait: g.next.Sub(now), fails: g.fails}, true
}

// abandon gives the probe back unused (the send was cancelled).
func (g *gate) abandon(probe bool) {
	if !probe {
		return
	}
	g.mu.Lock()
	g.probing = false
	g.wakeLocked()
	g.mu.Unlock()
}

func (g *gate) current() State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state
}

// open says whether the destination takes batches at full concurrency: it
// is up, and has taken a send since start (see success). Until then a
// batch at a time finds out, and the others stay unread in the spool
// instead of waiting for the gate, each holding a batch's memory.
func (g *gate) open() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state == StateUp && g.proven
}

func (g *gate) wakeLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// backoff is exponential with full jitter: uniform between min and
// min·2^fails, capped at max, and never below what the destination asked
// for with Retry-After (itself capped at max, so that one odd header
// cannot stall delivery for a day).
func (g *gate) backoff(fails int, after time.Duration) time.Duration {
	return jitter(g.min, g.max, fails, after)
}

func jitter(lo, hi time.Duration, fails int, after time.Duration) time.Duration {
	ceil := hi
	if fails < 62 && lo<<fails > 0 && lo<<fails < hi {
		ceil = lo << fails
	}
	d := lo
	if ceil > lo {
		d += rand.N(ceil - lo + 1)
	}
	return max(d, min(after, hi))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
