package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

const (
	// maxPooledOut bounds the output buffer kept in the pool between
	// requests, in multiples of MaxRequestBytes.
	maxPooledOut = 4
	// maxPooledNumber bounds the number buffer kept in the pool: a number
	// in range has at most a few hundred digits.
	maxPooledNumber = 1 << 10
)

var successBody = []byte(`{"success":true}`)

// clientMetricsPath is where analytics.js posts its own telemetry, beside
// the tracking paths on the same apiHost. Its counters describe the
// library, not the app's users, and Segment keeps them; a sidecar has no
// one to give them to.
const clientMetricsPath = "/v1/m"

// acceptClientMetrics answers analytics.js's telemetry with success and
// drops it. Answered 404 without CORS headers, every page left open for
// its 30 s flush logged a console error in the browser.
func acceptClientMetrics(ctx *fasthttp.RequestCtx) {
	setCORS(ctx)
	switch {
	case ctx.IsPost():
		ctx.SetContentType("application/json")
		ctx.SetBody(successBody)
	case ctx.IsOptions():
		preflight(ctx)
	default:
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST, OPTIONS")
		writeError(ctx, errMethodNotAllowed)
	}
}

func (s *Server) handleEvents(ctx *fasthttp.RequestCtx, ep endpoint) {
	setCORS(ctx)
	switch {
	case ctx.IsPost():
	case ctx.IsOptions():
		preflight(ctx)
		return
	default:
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST, OPTIONS")
		s.failEvents(ctx, ep, errMethodNotAllowed)
		return
	}
	start := time.Now()
	s.ingestRequest(ctx, ep)
	s.m.duration[ep].Observe(time.Since(start).Seconds())
}

func (s *Server) ingestRequest(ctx *fasthttp.RequestCtx, ep endpoint) {
	// Counted before the check: a request that finds shutdown not begun
	// is then seen by WaitAdmitted.
	s.admitted.Add(1)
	defer s.admitted.Add(-1)
	if s.closing.Load() {
		s.failEvents(ctx, ep, errShuttingDown)
		return
	}
	in, done, err := s.parseAndSubmit(ctx, ep)
	defer func() {
		if in != nil {
			s.putIngest(in)
		}
	}()
	if err != nil {
		s.failEvents(ctx, ep, err)
		return
	}
	received := len(in.events) - in.skipped + len(in.dead)
	// Counted once submitted, not once stored: waiting for the commit
	// would keep the request's buffers from the pool (see below). A
	// request the spool then fails is counted again when it is retried.
	for _, f := range in.found {
		s.m.violations.WithLabelValues(f.typ, f.label).Inc()
	}
	s.countRejected(in)
	var answer *[]byte
	if !s.tail.watched(s.now()) {
		// The spool has its copy: the buffers serve other requests while
		// this one waits out the commit. At 64 connections of 100-event
		// batches they were a fifth of the live heap; with a tracking
		// plan blocking half the events, when every request kept its
		// own, growing them again took a fifth of the CPU.
		if len(in.rejected) > 0 {
			answer = s.answers.Get().(*[]byte)
			*answer = appendRejected((*answer)[:0], in.rejected)
		}
		s.putIngest(in)
		in = nil
	}
	// Not cancelled with the request: fasthttp cancels every RequestCtx
	// when shutdown begins, and a client whose events are being stored
	// must get the truth (200), not a 503 that makes it send them again.
	err = <-done
	if err == nil {
		s.m.received[ep].Add(float64(received))
		s.answerStored(ctx, ep, in, answer)
	} else {
		s.failEvents(ctx, ep, err)
	}
	if answer != nil {
		s.answers.Put(answer)
	}
}

// answerStored answers a request whose events are durable, and shows them
// in the live tail if someone watches. in is nil if it went back to the
// pool, nobody watching; answer is then the body listing its rejected
// events, if any.
func (s *Server) answerStored(ctx *fasthttp.RequestCtx, ep endpoint, in *ingest, answer *[]byte) {
	ctx.SetContentType("application/json")
	if in == nil {
		if answer != nil {
			ctx.SetBody(*answer)
		} else {
			ctx.SetBody(successBody)
		}
		return
	}
	s.tail.record(ep, s.now(), in.events, in.dead, in.rejected)
	if len(in.rejected) == 0 {
		ctx.SetBody(successBody)
		return
	}
	in.scratch = appendRejected(in.scratch[:0], in.rejected)
	ctx.SetBody(in.scratch)
}

// appendRejected appends the success body that lists the events
// dead-lettered at ingest: their indexes in the request and why.
func appendRejected(b []byte, rejected []rejection) []byte {
	b = append(b, `{"success":true,"rejected":[`...)
	for i, r := range rejected {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(r.index), 10)
		b = append(b, `,"reason":`...)
		b = appendString(b, []byte(r.text))
		b = append(b, '}')
	}
	return append(b, ']', '}')
}

// parseAndSubmit reads, parses and enriches the request into an ingest
// and hands its events to the spool. Parsing is CPU work: more of it at
// once than there are cores only holds more bodies, parsers and output
// buffers in memory, which with many connections made memory grow with
// their number. So a request takes a parse token before its body is read
// (takeBody).
func (s *Server) parseAndSubmit(ctx *fasthttp.RequestCtx, ep endpoint) (*ingest, <-chan error, error) {
	in, raw, err := s.takeBody(ctx)
	defer func() { <-s.parsing }()
	var body []byte
	if err == nil {
		body, err = in.decodeBody(ctx, raw, s.cfg.MaxRequestBytes, s.errRequestTooLarge)
	}
	if err == nil {
		key := basicUser(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization), in.auth[:])
		err = s.pp.parse(in, ep, body, key, s.now())
	}
	if err == nil && s.cfg.Strict && len(in.rejected) > 0 {
		s.countRejected(in)
		r := in.rejected[0]
		err = badRequest(errInvalidEvent, fmt.Sprintf("event %d: %s", r.index, r.text))
	}
	if err != nil {
		return in, nil, err
	}
	done, skipped, err := s.sp.SubmitFrom(spool.SourceHTTP, in.events, in.dead)
	in.skipped = skipped
	return in, done, err
}

func (s *Server) countRejected(in *ingest) {
	for _, r := range in.rejected {
		s.m.rejected[r.code].Inc()
	}
}

func (s *Server) putIngest(in *ingest) {
	in.reset()
	// A rare huge request must not pin its buffers in the pool forever.
	if cap(in.out) > maxPooledOut*s.cfg.MaxRequestBytes {
		in.out = nil
	}
	if cap(in.scratch) > maxPooledOut*s.cfg.MaxRequestBytes {
		in.scratch = nil
	}
	if cap(in.numText) > maxPooledNumber {
		in.numText = nil // a hostile number, refused
	}
	s.ingest.Put(in)
}

// failEvents answers an event request with err and counts it. Only errors
// the operator must act on are logged: client mistakes are counted, and a
// full spool is reported by the spool itself.
func (s *Server) failEvents(ctx *fasthttp.RequestCtx, ep endpoint, err error) {
	a := answerFor(err)
	s.m.errors[a.code].Inc()
	if a.status == fasthttp.StatusInternalServerError {
		s.log.LogAttrs(context.Background(), slog.LevelError, "store events",
			slog.String(logKeyEndpoint, ep.String()), slog.Any(logKeyErr, err))
	}
	if errors.Is(err, errShuttingDown) {
		ctx.SetConnectionClose()
	}
	writeError(ctx, err)
}
