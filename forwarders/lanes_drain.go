package forwarders

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// caughtUpDraining is called by run when the destination drains for
// shutdown and its main stream is caught up. With lanes, the drainer says
// when the destination is drained: once its lanes have no batch to send
// now, so that a lane that recovered is not cut off midway.
func (d *Dispatcher) caughtUpDraining() {
	if d.lanes == nil {
		d.drainOnce.Do(func() { close(d.drained) })
		return
	}
	d.lanes.mainDrainedOnce.Do(func() { close(d.lanes.mainDrained) })
}

// run is the drainer: it gives each lane with events below the main
// stream's acknowledged position one batch at a time, in turn, up to the
// destination's concurrency, when the lane's backoff has passed or its
// oldest event reaches max_age.
func (l *lanes) run(ctx context.Context) {
	d := l.d
	done := make(chan *lane, d.dest.Concurrency)
	running := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	mainDrained := l.mainDrained
	for {
		next := l.launch(ctx, time.Now(), &running, done)
		if mainDrained == nil && running == 0 {
			// Lanes waiting out a backoff are not waited for: their
			// events are parked, and go after a restart.
			d.drainOnce.Do(func() { close(d.drained) })
		}
		var tick <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			for ; running > 0; running-- {
				<-done
			}
			return
		case <-done:
			running--
		case <-l.wake:
		case <-tick:
		case <-mainDrained:
			mainDrained = nil
		}
		timer.Stop()
	}
}

// launch starts an attempt on each lane that is due, in turn, while there
// is room, and returns when the next lane will be due (zero: when woken).
func (l *lanes) launch(ctx context.Context, now time.Time, running *int, done chan<- *lane) time.Time {
	d := l.d
	destUp := d.gate.current() == StateUp
	acked := l.acked.Load()
	var next time.Time
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.order)
	start := l.turn
	for i := 0; i < n; i++ {
		ln := l.order[(start+i)%n]
		if ln.busy || ln.parked <= 0 || ln.firstSeq >= acked {
			continue
		}
		expiry := ln.oldest.Add(d.dest.MaxAge)
		sendable := destUp && !now.Before(ln.next)
		if !sendable && now.Before(expiry) {
			at := expiry
			if destUp {
				at = earliest(at, ln.next)
			} else {
				at = earliest(at, now.Add(d.dest.BackoffMin))
			}
			next = earliest(next, at)
			continue
		}
		if *running >= d.dest.Concurrency {
			// The next attempt to finish wakes the drainer, which
			// starts here again.
			l.turn = (start + i) % n
			return time.Time{}
		}
		ln.busy = true
		*running++
		l.turn = (start + i + 1) % n
		d.spawn(func() {
			l.attempt(ctx, ln, acked, sendable)
			done <- ln
		})
	}
	return next
}

// attempt reads a batch of ln's lane below acked, dead-letters what is
// past max_age and, when send, sends the rest under ln's own backoff.
func (l *lanes) attempt(ctx context.Context, ln *lane, acked uint64, send bool) {
	d := l.d
	l.mu.Lock()
	from, lastErr := ln.firstSeq, ln.lastErr
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		ln.busy = false
		l.closeIfDone(ln)
		l.mu.Unlock()
	}()
	recs, err := l.sp.ReadLane(d.dest.Name, ln.key, from, acked, nil, d.dest.BatchEvents, d.dest.BatchBytes)
	if err != nil {
		if ctx.Err() == nil {
			d.setLastErr(fmt.Errorf("read lane: %w", err))
			l.mu.Lock()
			ln.next = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, ln.fails+1, 0))
			l.mu.Unlock()
		}
		return
	}
	l.hold(int64(len(recs)))
	defer l.hold(-int64(len(recs)))
	if len(recs) == 0 {
		// Nothing is parked below acked: what the count says is above it.
		l.mu.Lock()
		ln.firstSeq = max(ln.firstSeq, acked)
		l.mu.Unlock()
		return
	}
	rest, ok := d.expire(ctx, part{recs: recs, lastErr: lastErr})
	if !ok {
		return
	}
	var (
		finished []spool.Record // delivered or dead-lettered
		failed   error
	)
	finished = append(finished, notIn(recs, rest)...)
	if send && len(rest) > 0 {
		var delivered []spool.Record
		delivered, failed, ok = l.send(ctx, part{recs: rest, attempts: ln.fails})
		if !ok {
			return
		}
		finished = append(finished, delivered...)
	}
	if len(finished) > 0 {
		if err := l.sp.Unpark(d.dest.Name, ln.key, finished); err != nil {
			// They stay parked and go again: a duplicate, never a loss.
			d.setLastErr(fmt.Errorf("unpark: %w", err))
			finished = nil
		}
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	ln.parked = max(ln.parked-int64(len(finished)), 0)
	// Events are stored in the order of their numbers: the first one left
	// is the oldest, and past this batch the lane is younger than its last.
	i := firstNotIn(recs, finished)
	ln.firstSeq, ln.oldest = recs[len(recs)-1].Seq+1, recs[len(recs)-1].Stored
	if i < len(recs) {
		ln.firstSeq, ln.oldest = recs[i].Seq, recs[i].Stored
	}
	if ln.parked == 0 {
		ln.oldest = time.Time{}
	}
	switch {
	case failed != nil && keyFailure(part{recs: rest, fails: 1, lastErr: failed}):
		l.fail(ln, failed, now)
	case failed != nil:
		// The destination's trouble, which its gate holds: this key waits
		// like the others.
		ln.next = now.Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, 1, 0))
	case send:
		l.succeed(ln, now)
	}
}

// send delivers p to the end of its rejections (which halve it and
// dead-letter the refused events, as the main stream does), and stops at
// the first failure. It returns what was delivered or dead-lettered, the
// failure, and false when ctx ended.
func (l *lanes) send(ctx context.Context, p part) (finished []spool.Record, failure error, ok bool) {
	d := l.d
	todo := []part{p}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		start := time.Now()
		err := d.fwd.Send(ctx, p.recs)
		d.mDuration.Observe(time.Since(start).Seconds())
		p.attempts++
		if err != nil && ctx.Err() != nil {
			return finished, nil, false
		}
		if err == nil {
			d.deliveredN(len(p.recs))
			d.report(d.gate.success(false))
			l.outcome(len(p.recs), nil)
			finished = append(finished, p.recs...)
			continue
		}
		v := d.judgeSend(p, err)
		keyed := takeKeyFailures(&v)
		if v.failure != nil {
			d.report(d.gate.failure(false, v.failure, v.misconfigured, v.after))
			failure = v.failure
		} else {
			d.report(d.gate.success(false))
		}
		if len(keyed) > 0 && failure == nil {
			failure = keyed[0].lastErr
		}
		if len(v.dead) > 0 && !d.storeDead(ctx, v.dead, spool.ReasonRejected) {
			return finished, nil, false
		}
		var again []spool.Record
		for _, r := range v.redo {
			again = append(again, r.recs...)
		}
		for _, r := range keyed {
			again = append(again, r.recs...)
		}
		fin := notIn(p.recs, again)
		finished = append(finished, fin...)
		l.outcome(len(fin)-len(v.dead), nil)
		if failure != nil {
			// The rest waits for the lane's next turn.
			return finished, failure, true
		}
		for i := len(v.redo) - 1; i >= 0; i-- {
			todo = append(todo, v.redo[i])
		}
	}
	return finished, nil, true
}

// notIn returns the records of all whose Seq is not in some.
func notIn(all, some []spool.Record) []spool.Record {
	var out []spool.Record
	for _, r := range all {
		if !slices.ContainsFunc(some, func(s spool.Record) bool { return s.Seq == r.Seq }) {
			out = append(out, r)
		}
	}
	return out
}

// firstNotIn is the index of the first record of all that is not in
// done, len(all) when every one is.
func firstNotIn(all, done []spool.Record) int {
	for i, r := range all {
		if !slices.ContainsFunc(done, func(s spool.Record) bool { return s.Seq == r.Seq }) {
			return i
		}
	}
	return len(all)
}

// hold counts n parked events read (negative: let go of) by the drainer.
func (l *lanes) hold(n int64) {
	h := l.held.Add(n)
	for p := l.peakHeld.Load(); h > p && !l.peakHeld.CompareAndSwap(p, h); p = l.peakHeld.Load() {
	}
}
