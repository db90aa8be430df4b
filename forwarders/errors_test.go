package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
)

func TestClassify(t *testing.T) {
	const (
		ok = iota
		retryable
		rejected
		misconfigured
	)
	tests := []struct {
		scenario string
		status   int
		header   http.Header
		want     int
		after    time.Duration
	}{
		{"200 is delivered", 200, nil, ok, 0},
		{"204 is delivered", 204, nil, ok, 0},
		{"400 rejects the data", 400, nil, rejected, 0},
		{"413 rejects the data", 413, nil, rejected, 0},
		{"422 rejects the data", 422, nil, rejected, 0},
		{"401 is a misconfiguration", 401, nil, misconfigured, 0},
		{"403 is a misconfiguration", 403, nil, misconfigured, 0},
		{"404 is a misconfiguration", 404, nil, misconfigured, 0},
		{"405 is a misconfiguration, not a reason to drop data", 405, nil, misconfigured, 0},
		{"a redirect is a misconfiguration", 302, nil, misconfigured, 0},
		{"408 is retried", 408, nil, retryable, 0},
		{"429 without Retry-After is retried", 429, nil, retryable, 0},
		{"429 honours Retry-After in seconds", 429, http.Header{"Retry-After": {"7"}}, retryable, 7 * time.Second},
		{"503 honours Retry-After in seconds", 503, http.Header{"Retry-After": {"2"}}, retryable, 2 * time.Second},
		{"500 is retried", 500, nil, retryable, 0},
		{"504 is retried", 504, nil, retryable, 0},
		{"a garbled Retry-After is ignored", 503, http.Header{"Retry-After": {"soon"}}, retryable, 0},
		{"a negative Retry-After is ignored", 503, http.Header{"Retry-After": {"-3"}}, retryable, 0},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			err := classify(tt.status, tt.header)
			var (
				re  *RetryableError
				rej *RejectedError
				mis *MisconfiguredError
			)
			switch tt.want {
			case ok:
				if err != nil {
					t.Fatalf("classify(%d) = %v, want nil", tt.status, err)
				}
			case retryable:
				if !errors.As(err, &re) || !IsRetryable(err) {
					t.Fatalf("classify(%d) = %#v, want *RetryableError", tt.status, err)
				}
				if re.After != tt.after {
					t.Errorf("After = %v, want %v", re.After, tt.after)
				}
			case rejected:
				if !errors.As(err, &rej) || rej.Status != tt.status || IsRetryable(err) {
					t.Fatalf("classify(%d) = %#v, want *RejectedError", tt.status, err)
				}
			case misconfigured:
				if !errors.As(err, &mis) || mis.Status != tt.status || IsRetryable(err) {
					t.Fatalf("classify(%d) = %#v, want *MisconfiguredError", tt.status, err)
				}
			}
		})
	}
}

func TestRetryAfterAcceptsAnHTTPDate(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	h := http.Header{"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)}}
	if got := retryAfter(h, now); got != 90*time.Second {
		t.Errorf("retryAfter = %v, want 1m30s", got)
	}
	h.Set("Retry-After", now.Add(-time.Minute).Format(http.TimeFormat))
	if got := retryAfter(h, now); got != 0 {
		t.Errorf("retryAfter of a past date = %v, want 0", got)
	}
}

func TestWithBodyKeepsTheAnswerInTheError(t *testing.T) {
	err := withBody(classify(400, nil), `{"message":"bad event"}`)
	var rej *RejectedError
	if !errors.As(err, &rej) || rej.Body != `{"message":"bad event"}` {
		t.Fatalf("got %#v", err)
	}
	err = withBody(classify(503, nil), "busy")
	if want := "status 503: busy"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	err = withBody(classify(401, nil), "who are you")
	if want := "misconfigured: status 401: who are you"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}

func TestBatchErrorUnwrapsItsFailures(t *testing.T) {
	rej := &RejectedError{Status: 400}
	be := &BatchError{Errs: []error{nil, rej, nil}}
	var got *RejectedError
	if !errors.As(be, &got) || got != rej {
		t.Fatalf("errors.As did not find the record's error")
	}
	if be.Error() != "batch: 1 of 3 records failed, first: rejected with status 400" {
		t.Errorf("Error() = %q", be.Error())
	}
}

func TestRetryReason(t *testing.T) {
	tests := []struct {
		scenario string
		err      error
		want     string
	}{
		{"429 is throttling", classify(429, nil), reasonThrottled},
		{"503 is a server error", classify(503, nil), reasonServerError},
		{"408 is a server error", classify(408, nil), reasonServerError},
		{"401 is a misconfiguration", classify(401, nil), reasonMisconfigured},
		{"a deadline is a timeout", &RetryableError{Err: fmt.Errorf("post: %w", context.DeadlineExceeded)}, reasonTimeout},
		{"a net timeout is a timeout", &RetryableError{Err: timeoutErr{}}, reasonTimeout},
		{"a reset connection is a network error", &RetryableError{Err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}}, reasonNetwork},
		{"an early EOF is a network error", &RetryableError{Err: io.ErrUnexpectedEOF}, reasonNetwork},
		{"anything else is just an error", errors.New("disk on fire"), reasonOther},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			if got := retryReason(tt.err); got != tt.want {
				t.Errorf("retryReason(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// incomparableErr cannot be compared with ==: it holds a slice.
type incomparableErr struct{ causes []error }

func (incomparableErr) Error() string { return "several causes" }

// wrappingErr is comparable by type, but panics under == when what it
// wraps is not.
type wrappingErr struct{ err error }

func (e wrappingErr) Error() string { return e.err.Error() }

func TestSameError(t *testing.T) {
	tooLarge := fmt.Errorf("%w (uncompressed_bytes=9000)", kerr.MessageTooLarge)
	retry := &RetryableError{Err: tooLarge}
	held := wrappingErr{err: incomparableErr{}}
	tests := []struct {
		scenario string
		a, b     error
		same     bool
	}{
		{"nil is nil", nil, nil, true},
		{"nil is no error", nil, retry, false},
		{"no error is nil", retry, nil, false},
		{"one pointer", retry, retry, true},
		{"two pointers alike", retry, &RetryableError{Err: tooLarge}, false},
		{"one Kafka error code", kerr.NotLeaderForPartition, kerr.NotLeaderForPartition, true},
		{"one broker answer for one record batch", tooLarge, tooLarge, true},
		{"the answers for two record batches", tooLarge, fmt.Errorf("%w (uncompressed_bytes=9000)", kerr.MessageTooLarge), false},
		{"a struct value compared by content", context.DeadlineExceeded, context.DeadlineExceeded, true},
		{"two values of different types", context.DeadlineExceeded, context.Canceled, false},
		{"an errno compared by value", syscall.ECONNRESET, syscall.ECONNRESET, true},
		{"a value holding a slice, which == cannot compare", incomparableErr{}, incomparableErr{}, false},
		{"a value holding one that == cannot compare", held, held, false},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			if got := sameError(tt.a, tt.b); got != tt.same {
				t.Errorf("sameError(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.same)
			}
		})
	}
}

// TestRecordsFailingWithOneValueAreSplitTogether: a BatchError whose
// records share one error value, a pointer or not, is settled as one part:
// a shared rejection is halved like a whole batch's, not dead-lettered
// record by record.
func TestRecordsFailingWithOneValueAreSplitTogether(t *testing.T) {
	for _, shared := range []error{&RejectedError{Status: 400}, rejectedValue{}} {
		t.Run(fmt.Sprintf("%T", shared), func(t *testing.T) {
			errs := []error{nil, shared, shared, shared, shared, nil}
			groups := groupFailures(errs)
			if len(groups) != 2 || !slices.Equal(groups[0].idx, []int{0, 5}) || !slices.Equal(groups[1].idx, []int{1, 2, 3, 4}) {
				t.Errorf("groups %+v, want the delivered records and the four that failed together", groups)
			}
		})
	}
}

// rejectedValue is a rejection that is a value, not a pointer.
type rejectedValue struct{}

func (rejectedValue) Error() string { return "rejected" }
