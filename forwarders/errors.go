package forwarders

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
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
