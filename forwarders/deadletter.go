package forwarders

import (
	"context"
	"fmt"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

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

func rejectText(e *RejectedError) string {
	if e.Body != "" {
		return truncate(e.Body, errorBodyLimit)
	}
	return truncate(e.Error(), errorBodyLimit)
}
