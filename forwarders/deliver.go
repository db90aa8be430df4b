package forwarders

import (
	"context"
	"errors"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

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
	if d.lanes != nil {
		var ok bool
		if recs, ok = d.lanes.divert(ctx, recs); !ok {
			return false
		}
	}
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
		if d.lanes != nil {
			d.lanes.outcome(len(p.recs), nil)
		}
		return nil, true
	}
	v := d.judgeSend(p, err)
	var keyed []part // failed under their key alone: for its lane
	if d.lanes != nil {
		keyed = takeKeyFailures(&v)
	}
	if v.failure != nil {
		d.setLastErr(v.failure)
		d.mu.Lock()
		d.lastFail = v.failure
		d.mu.Unlock()
		d.report(d.gate.failure(probe, v.failure, v.misconfigured, v.after))
	} else {
		d.setLastErr(err) // a rejection: the destination is fine, the data is not
		d.report(d.gate.success(probe))
	}
	if len(v.dead) > 0 && !d.storeDead(ctx, v.dead, spool.ReasonRejected) {
		return nil, false
	}
	if d.lanes != nil {
		d.lanes.outcome(len(p.recs)-len(v.dead)-countRecs(v.redo)-countRecs(keyed), keyed)
		if len(keyed) > 0 && !d.lanes.parkFailed(ctx, keyed) {
			return nil, false
		}
	}
	return v.redo, true
}
