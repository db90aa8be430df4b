package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
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
