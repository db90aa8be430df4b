package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RetryableError is a failure of the destination, not of the data: the same
// batch may succeed later. Forwarders wrap network errors, timeouts, 408, 429
// and 5xx answers in it.
type RetryableError struct {
	Err error
	// After is the wait the destination asked for (Retry-After); zero when
	// it asked for none. The dispatcher waits at least this long, capped at
	// the destination's backoff_max.
	After time.Duration
}

func (e *RetryableError) Error() string {
	if e.After > 0 {
		return fmt.Sprintf("%v (retry after %v)", e.Err, e.After)
	}
	return e.Err.Error()
}

func (e *RetryableError) Unwrap() error { return e.Err }

// IsRetryable reports whether err holds a *RetryableError.
func IsRetryable(err error) bool {
	var re *RetryableError
	return errors.As(err, &re)
}

// RejectedError means the destination refused the data itself (HTTP 400,
// 413, 422): sending the same events again cannot succeed. The dispatcher
// splits the batch until the refused events are isolated and dead-letters
// only those.
type RejectedError struct {
	Status int    // the HTTP status; 0 for kinds without one
	Body   string // at most the first KiB of the answer
	// Err is the underlying cause for kinds that have one (a Kafka error
	// code); nil for HTTP.
	Err error
}

func (e *RejectedError) Error() string {
	var b strings.Builder
	b.WriteString("rejected")
	if e.Status != 0 {
		fmt.Fprintf(&b, " with status %d", e.Status)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Body != "" {
		fmt.Fprintf(&b, ": %s", e.Body)
	}
	return b.String()
}

func (e *RejectedError) Unwrap() error { return e.Err }

// MisconfiguredError means the destination refuses us, not the data (HTTP
// 401, 403, 404 and other 4xx, or a redirect): a wrong URL or credential.
// The dispatcher retries every backoff_max, reports the destination as
// misconfigured, and never dead-letters the events for it.
type MisconfiguredError struct {
	Status int // the HTTP status; 0 for kinds without one
	Err    error
}

func (e *MisconfiguredError) Error() string {
	return "misconfigured: " + e.Err.Error()
}

func (e *MisconfiguredError) Unwrap() error { return e.Err }

// BatchError reports a batch that failed record by record: Errs has one
// entry per record of the batch, in order, nil for a delivered record.
// Each non-nil entry is classified as a whole batch's error would be, so a
// *RejectedError entry dead-letters that record alone and a retryable one
// retries it.
type BatchError struct {
	Errs []error
}

func (e *BatchError) Error() string {
	failed := 0
	var first error
	for _, err := range e.Errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if first == nil {
		return "batch: no record failed"
	}
	return fmt.Sprintf("batch: %d of %d records failed, first: %v", failed, len(e.Errs), first)
}

// Unwrap returns the non-nil entries, so errors.Is and errors.As see them.
func (e *BatchError) Unwrap() []error {
	out := make([]error, 0, len(e.Errs))
	for _, err := range e.Errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// sameError reports whether a and b are one error value, as records that
// failed together share: a Kafka record batch's records, a Segment
// request's. Values are compared with ==, pointers by identity and values
// such as context.DeadlineExceeded by content, except where == would
// panic (a value holding a slice or a map), which are never the same. nil
// is the same as nil only.
func sameError(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	va := reflect.ValueOf(a)
	return va.Type() == reflect.TypeOf(b) && va.Comparable() && a == b
}

// statusError carries an HTTP answer that is not a success into
// *RetryableError and *MisconfiguredError, so status-based retry reasons
// can be told apart with errors.As rather than by message.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string {
	if e.body == "" {
		return "status " + strconv.Itoa(e.code)
	}
	return "status " + strconv.Itoa(e.code) + ": " + e.body
}

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
