package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"

	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

// Kinds of error. The text of each is its answer's code (see answers), so
// that a log line names it as the client saw it.
var (
	errInvalidJSON         = errors.New("invalid_json")
	errInvalidGzip         = errors.New("invalid_gzip")
	errUnsupportedEncoding = errors.New("unsupported_encoding")
	errEmptyBatch          = errors.New("empty_batch")
	errTooLarge            = errors.New("too_large")
	errInvalidEvent        = errors.New("invalid_event")
	errInvalidQuery        = errors.New("invalid_query")
	errUnauthorized        = errors.New("unauthorized")
	errForbidden           = errors.New("forbidden")
	errNotFound            = errors.New("not_found")
	errMethodNotAllowed    = errors.New("method_not_allowed")
	errIncompleteBody      = errors.New("incomplete_body")
	errBodyTimeout         = errors.New("timeout")
	// errShuttingDown is answered from BeginShutdown on, so SDKs keep their
	// events and retry against the next instance (or this one, restarted).
	errShuttingDown = errors.New("proxy: shutting down")
	// errEmptyBody answers a request with no body at all.
	errEmptyBody = badRequest(errInvalidJSON, "body is empty")
)

// requestError is a bad request with the message its answer carries.
type requestError struct {
	kind error
	msg  string
}

func (e *requestError) Error() string { return e.kind.Error() + ": " + e.msg }
func (e *requestError) Unwrap() error { return e.kind }

func badRequest(kind error, msg string) error { return &requestError{kind: kind, msg: msg} }

// answerRow is how an error is answered: its HTTP status, the machine-readable
// code of the body and the message for a person.
type answerRow struct {
	err    error // matched with errors.Is
	status int
	code   string
	// message is what the answer says. A requestError's own message wins
	// over it; "" answers the error's text, for errors whose text names
	// only what the client asked for.
	message string
}

// answers is the one table of error answers: statusFor and messageFor read
// it, and the metrics count each of its codes. The first row the error
// matches wins; an error matching none is answered internalAnswer.
//
// The SDKs act on the status only: 4xx makes them drop the request, 5xx
// makes them retry, so anything that may succeed later (a full spool, a
// shutdown) must be 503, and nothing unknown may be a 4xx. Internal errors
// are not echoed: they may name files or hold data, and the log has them.
var answers = []answerRow{
	// Bad requests: the request itself is wrong, and sending it again
	// cannot help.
	{err: errInvalidJSON, status: http.StatusBadRequest, code: "invalid_json"},
	{err: errInvalidGzip, status: http.StatusBadRequest, code: "invalid_gzip"},
	{err: errUnsupportedEncoding, status: http.StatusBadRequest, code: "unsupported_encoding"},
	{err: errEmptyBatch, status: http.StatusBadRequest, code: "empty_batch"},
	{err: errTooLarge, status: http.StatusBadRequest, code: "too_large"},
	{err: errInvalidEvent, status: http.StatusBadRequest, code: "invalid_event"},
	{err: errInvalidQuery, status: http.StatusBadRequest, code: "invalid_query"},
	{err: errIncompleteBody, status: http.StatusBadRequest, code: "incomplete_body"},
	{err: errBodyTimeout, status: http.StatusRequestTimeout, code: "timeout",
		message: "the body did not arrive within the read timeout"},
	{err: errUnauthorized, status: http.StatusUnauthorized, code: "unauthorized",
		message: "missing or unknown write key"},
	{err: errForbidden, status: http.StatusForbidden, code: "forbidden",
		message: "admin endpoints need a loopback client or the admin token"},
	{err: errNotFound, status: http.StatusNotFound, code: "not_found", message: "not found"},
	{err: errMethodNotAllowed, status: http.StatusMethodNotAllowed, code: "method_not_allowed",
		message: "method not allowed"},
	// Names only the destination asked for.
	{err: spool.ErrUnknownConsumer, status: http.StatusBadRequest, code: "unknown_destination"},
	{err: spool.ErrFull, status: http.StatusServiceUnavailable, code: "unavailable",
		message: "spool is full, retry later"},
	{err: spool.ErrClosed, status: http.StatusServiceUnavailable, code: "unavailable",
		message: "shutting down, retry later"},
	{err: errShuttingDown, status: http.StatusServiceUnavailable, code: "unavailable",
		message: "shutting down, retry later"},
	{err: context.Canceled, status: http.StatusServiceUnavailable, code: "unavailable",
		message: "shutting down, retry later"},
	{err: context.DeadlineExceeded, status: http.StatusServiceUnavailable, code: "unavailable",
		message: "timed out storing events, retry later"},
}

// internalAnswer answers an error that matches no row of answers.
var internalAnswer = answerRow{status: http.StatusInternalServerError, code: "internal", message: "internal error"}

// answerFor returns the row of answers err matches, or internalAnswer.
func answerFor(err error) *answerRow {
	for i := range answers {
		if errors.Is(err, answers[i].err) {
			return &answers[i]
		}
	}
	return &internalAnswer
}

// answerCodes returns the codes of every error answer, each once, in the
// order of answers: the bounded label set of spillway_request_errors_total.
func answerCodes() []string {
	var codes []string
	for _, a := range answers {
		if !slices.Contains(codes, a.code) {
			codes = append(codes, a.code)
		}
	}
	return append(codes, internalAnswer.code)
}

// statusFor is where an error becomes an HTTP status and the answer's code;
// nil is a 200.
func statusFor(err error) (status int, code string) {
	if err == nil {
		return http.StatusOK, ""
	}
	a := answerFor(err)
	return a.status, a.code
}

// messageFor is the human half of an answer.
func messageFor(err error) string {
	var re *requestError
	if errors.As(err, &re) {
		return re.msg
	}
	if a := answerFor(err); a.message != "" {
		return a.message
	}
	return err.Error()
}

// retryAfter is what a 503 asks SDKs to wait, in seconds. A full spool or
// a restart takes seconds to clear, not milliseconds.
const retryAfter = "5"

// writeError answers with err's status and the Segment error shape.
func writeError(ctx *fasthttp.RequestCtx, err error) {
	status, code := statusFor(err)
	ctx.SetStatusCode(status)
	if status == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, retryAfter)
	}
	ctx.SetContentType("application/json")
	b := make([]byte, 0, 128)
	b = append(b, `{"success":false,"code":`...)
	b = appendString(b, []byte(code))
	b = append(b, `,"message":`...)
	b = appendString(b, []byte(messageFor(err)))
	ctx.SetBody(append(b, '}'))
}

// handleConnError answers requests fasthttp refused before our handler saw
// them. A body far over the limit lands here: it gets the same 400 JSON as
// one slightly over, though fasthttp then closes the connection without
// reading the body, so a client still sending may see a reset instead.
func (s *Server) handleConnError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var netErr *net.OpError
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		setCORS(ctx)
		s.m.errors[answerFor(s.errRequestTooLarge).code].Inc()
		writeError(ctx, s.errRequestTooLarge)
	case errors.As(err, &small):
		ctx.Error("Too big request header", fasthttp.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &netErr) && netErr.Timeout():
		ctx.Error("Request timeout", fasthttp.StatusRequestTimeout)
	default:
		ctx.Error("Error when parsing request", fasthttp.StatusBadRequest)
	}
}
