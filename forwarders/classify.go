package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// classify maps an HTTP answer to the error the dispatcher acts on: nil for
// 2xx. The body, which classify does not read, is attached by withBody.
func classify(status int, header http.Header) error {
	switch {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusBadRequest, status == http.StatusRequestEntityTooLarge,
		status == http.StatusUnprocessableEntity:
		return &RejectedError{Status: status}
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500:
		return &RetryableError{Err: &statusError{code: status}, After: retryAfter(header, time.Now())}
	case status >= 300 && status < 500:
		// 401/403/404 as the contract says, and with them every other 4xx
		// and the redirects we do not follow (a POST must not silently turn
		// into a GET): all say the URL or credentials are wrong, and
		// retrying slowly loses nothing where dead-lettering would.
		return &MisconfiguredError{Status: status, Err: &statusError{code: status}}
	default:
		return &RetryableError{Err: &statusError{code: status}}
	}
}

// withBody attaches the (already truncated) answer body to a classified error.
func withBody(err error, body string) error {
	var se *statusError
	switch e := err.(type) {
	case *RejectedError:
		e.Body = body
	case *RetryableError, *MisconfiguredError:
		if errors.As(e, &se) {
			se.body = body
		}
	}
	return err
}

// retryAfter parses Retry-After, given in seconds or as an HTTP date; zero
// when absent, unparsable or in the past.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		// Anything beyond a day is nonsense for us and would overflow.
		return time.Duration(min(secs, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// Retry reasons, the values of spillway_forward_retries_total's reason label.
const (
	reasonTimeout       = "timeout"
	reasonNetwork       = "network"
	reasonThrottled     = "throttled"    // 429
	reasonServerError   = "server_error" // 408, 5xx
	reasonMisconfigured = "misconfigured"
	reasonRejected      = "rejected" // a rejected batch split and resent
	reasonOther         = "error"
)

var retryReasons = []string{reasonTimeout, reasonNetwork, reasonThrottled, reasonServerError,
	reasonMisconfigured, reasonRejected, reasonOther}

// retryReason names why err is retried, from a bounded set.
func retryReason(err error) string {
	var (
		se *statusError
		me *MisconfiguredError
		re *RejectedError
		ne net.Error
	)
	switch {
	case errors.As(err, &me):
		return reasonMisconfigured
	case errors.As(err, &re):
		return reasonRejected
	case errors.As(err, &se):
		if se.code == http.StatusTooManyRequests {
			return reasonThrottled
		}
		return reasonServerError
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return reasonTimeout
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE):
		return reasonNetwork
	}
	return reasonOther
}

// verdict is what a failed send means for its records and for the
// destination.
type verdict struct {
	redo []part             // the parts to send again, in order
	dead []spool.DeadLetter // records refused on their own
	// failure is the destination's failure, for the gate: the first
	// misconfiguration, else the first retryable failure; nil when the
	// destination only refused data.
	failure       error
	misconfigured bool
	after         time.Duration // the longest Retry-After asked for
}

// judgeSend is the verdict on a send of p that failed with err. The
// records of a BatchError are judged by group of one error value, and
// those that did not fail are delivered.
func (d *Dispatcher) judgeSend(p part, err error) verdict {
	var (
		v  verdict
		be *BatchError
	)
	switch {
	case errors.As(err, &be) && len(be.Errs) == len(p.recs):
		delivered := 0
		for _, g := range groupFailures(be.Errs) {
			if g.err == nil {
				delivered += len(g.idx)
				continue
			}
			d.judge(&v, part{recs: pick(p.recs, g.idx), attempts: p.attempts, fails: p.fails}, g.err)
		}
		d.deliveredN(delivered)
	case be != nil:
		// Which records failed is unknown: nothing may be dead-lettered
		// on its word, so the whole part is retried.
		d.judge(&v, p, &RetryableError{Err: fmt.Errorf("forwarder returned %d errors for %d records: %v",
			len(be.Errs), len(p.recs), err)})
	default:
		d.judge(&v, p, err)
	}
	return v
}

// judge adds to v what err means for p's records. A rejection
// dead-letters a record alone and halves more; a misconfiguration retries
// them after backoff_max; anything else after the jittered backoff of the
// part's failures, and no sooner than a Retry-After.
func (d *Dispatcher) judge(v *verdict, p part, err error) {
	var (
		rej *RejectedError
		mis *MisconfiguredError
		ret *RetryableError
	)
	p.lastErr = err
	switch {
	case errors.As(err, &rej) && len(p.recs) == 1:
		v.dead = append(v.dead, d.deadLetter(p.recs[0], spool.ReasonRejected, rej.Status, rejectText(rej), p.attempts))
	case errors.As(err, &rej):
		// Halve until the refused events are alone: log2(n) extra sends
		// per refused event, and every other event delivered. The
		// destination answered, so the halves go at once.
		h := len(p.recs) / 2
		v.redo = append(v.redo, part{recs: p.recs[:h:h], attempts: p.attempts, lastErr: err},
			part{recs: p.recs[h:], attempts: p.attempts, lastErr: err})
		d.retry(reasonRejected)
	case errors.As(err, &mis):
		p.fails++
		p.notBefore = time.Now().Add(d.dest.BackoffMax)
		v.redo = append(v.redo, p)
		d.retry(reasonMisconfigured)
		if !v.misconfigured {
			v.failure, v.misconfigured = err, true
		}
	default:
		var wait time.Duration
		if errors.As(err, &ret) {
			wait = ret.After
			v.after = max(v.after, ret.After)
		}
		p.fails++
		p.notBefore = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, p.fails, wait))
		v.redo = append(v.redo, p)
		d.retry(retryReason(err))
		if v.failure == nil {
			v.failure = err
		}
	}
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
