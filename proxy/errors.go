package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

// Kinds of bad request. Each is the machine-readable code of its answer, so
// statusFor maps them without a second table.
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
	// errShuttingDown is answered from BeginShutdown on, so SDKs keep their
	// events and retry against the next instance (or this one, restarted).
	errShuttingDown = errors.New("proxy: shutting down")
	// errEmptyBody answers a request with no body at all.
	errEmptyBody = badRequest(errInvalidJSON, "body is empty")
)

// badRequestKinds are answered 400: the request itself is wrong, and
// sending it again cannot help.
var badRequestKinds = []error{
	errInvalidJSON, errInvalidGzip, errUnsupportedEncoding, errEmptyBatch,
	errTooLarge, errInvalidEvent, errInvalidQuery,
}

// requestError is a bad request with the message its answer carries.
type requestError struct {
	kind error
	msg  string
}

func (e *requestError) Error() string { return e.kind.Error() + ": " + e.msg }
func (e *requestError) Unwrap() error { return e.kind }

func badRequest(kind error, msg string) error { return &requestError{kind: kind, msg: msg} }

// statusFor is the one place where an error becomes an HTTP status and the
// answer's code. The SDKs act on the status only: 4xx makes them drop the
// request, 5xx makes them retry, so anything that may succeed later (a full
// spool, a shutdown) must be 503, and nothing unknown may be a 4xx.
func statusFor(err error) (status int, code string) {
	for _, k := range badRequestKinds {
		if errors.Is(err, k) {
			return http.StatusBadRequest, k.Error()
		}
	}
	switch {
	case err == nil:
		return http.StatusOK, ""
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, errForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, errNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, errMethodNotAllowed):
		return http.StatusMethodNotAllowed, "method_not_allowed"
	case errors.Is(err, spool.ErrUnknownConsumer):
		return http.StatusBadRequest, "unknown_destination"
	case errors.Is(err, spool.ErrFull), errors.Is(err, spool.ErrClosed),
		errors.Is(err, errShuttingDown),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "unavailable"
	default:
		return http.StatusInternalServerError, "internal"
	}
}

// messageFor is the human half of an answer. Internal errors are not
// echoed: they may name files or hold data, and the log has them.
func messageFor(err error) string {
	var re *requestError
	switch {
	case errors.As(err, &re):
		return re.msg
	case errors.Is(err, errUnauthorized):
		return "missing or unknown write key"
	case errors.Is(err, errForbidden):
		return "admin endpoints need a loopback client or the admin token"
	case errors.Is(err, errNotFound):
		return "not found"
	case errors.Is(err, errMethodNotAllowed):
		return "method not allowed"
	case errors.Is(err, spool.ErrUnknownConsumer):
		return err.Error() // names only the destination asked for
	case errors.Is(err, spool.ErrFull):
		return "spool is full, retry later"
	case errors.Is(err, spool.ErrClosed), errors.Is(err, errShuttingDown),
		errors.Is(err, context.Canceled):
		return "shutting down, retry later"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out storing events, retry later"
	default:
		return "internal error"
	}
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
		s.m.errors["too_large"].Inc()
		writeError(ctx, s.errRequestTooLarge)
	case errors.As(err, &small):
		ctx.Error("Too big request header", fasthttp.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &netErr) && netErr.Timeout():
		ctx.Error("Request timeout", fasthttp.StatusRequestTimeout)
	default:
		ctx.Error("Error when parsing request", fasthttp.StatusBadRequest)
	}
}
