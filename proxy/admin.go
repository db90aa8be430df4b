package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

func (s *Server) handleStatus(ctx *fasthttp.RequestCtx) {
	if s.opts.Status == nil {
		writeError(ctx, errNotFound)
		return
	}
	if !onlyGet(ctx) {
		return
	}
	b, err := json.Marshal(s.opts.Status())
	if err != nil {
		s.log.LogAttrs(context.Background(), slog.LevelError, "marshal status", slog.Any(logKeyErr, err))
		writeError(ctx, fmt.Errorf("marshal status: %w", err))
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// adminAllowed guards the dead-letter endpoints. Dead letters hold whole
// events (personal data) and replay/purge change what gets delivered, so
// they answer only a loopback client (the sidecar's own pod, or
// `spillway dlq` on the host) or one holding the admin token.
func (s *Server) adminAllowed(ctx *fasthttp.RequestCtx) bool {
	if (ctx.RemoteIP().IsLoopback() && !forwarded(ctx)) ||
		bearerMatches(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization), s.cfg.AdminToken) {
		return true
	}
	writeError(ctx, errForbidden)
	return false
}

// forwarded reports whether a reverse proxy relayed the request: at the
// edge, one on the same host (the first-party domain analytics.js calls)
// makes every client look like loopback.
func forwarded(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	return len(h.Peek("X-Forwarded-For")) > 0 || len(h.Peek("Forwarded")) > 0 || len(h.Peek("X-Real-Ip")) > 0
}

func dlqFilter(ctx *fasthttp.RequestCtx) (spool.Filter, error) {
	args := ctx.QueryArgs()
	f := spool.Filter{
		Destination: string(args.Peek("destination")),
		Reason:      string(args.Peek("reason")),
	}
	if l := args.Peek("limit"); len(l) > 0 {
		n, err := strconv.Atoi(string(l))
		if err != nil || n < 0 {
			return f, badRequest(errInvalidQuery, "limit must be a whole number >= 0")
		}
		f.Limit = n
	}
	return f, nil
}

// handleDLQList streams the selected dead letters as NDJSON, one per line,
// so that listing a large store costs no more memory than one entry. An
// error after the first line can no longer change the status, so it is
// written as a last line {"error":"..."}.
func (s *Server) handleDLQList(ctx *fasthttp.RequestCtx) {
	if s.opts.DLQ == nil {
		writeError(ctx, errNotFound)
		return
	}
	if !onlyGet(ctx) || !s.adminAllowed(ctx) {
		return
	}
	f, err := dlqFilter(ctx)
	if err != nil {
		writeError(ctx, err)
		return
	}
	dlq, log := s.opts.DLQ, s.log
	ctx.SetContentType("application/x-ndjson")
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false) // keep events as they were sent
		err := dlq.DeadLetters(f, func(d spool.DeadLetter) error {
			d.WriteKey = spool.MaskWriteKey(d.WriteKey)
			return enc.Encode(d)
		})
		if err != nil {
			log.LogAttrs(context.Background(), slog.LevelWarn, "list dead letters", slog.Any(logKeyErr, err))
			_ = enc.Encode(struct {
				Error string `json:"error"`
			}{"list dead letters: " + err.Error()})
		}
	})
}

func (s *Server) handleDLQChange(ctx *fasthttp.RequestCtx, action string) {
	if s.opts.DLQ == nil {
		writeError(ctx, errNotFound)
		return
	}
	if !onlyPost(ctx) || !s.adminAllowed(ctx) {
		return
	}
	f, err := dlqFilter(ctx)
	if err != nil {
		writeError(ctx, err)
		return
	}
	var n int
	if action == "replay" {
		// The request's context ends at shutdown, which should stop a long
		// replay; what was replayed stays replayed.
		n, err = s.opts.DLQ.ReplayChecked(ctx, f, s.recheck)
	} else {
		n, err = s.opts.DLQ.Purge(f)
	}
	attrs := []slog.Attr{
		slog.String(logKeyAction, action), slog.Int(logKeyCount, n),
		slog.String("destination", f.Destination), slog.String("reason", f.Reason),
	}
	if err != nil {
		s.log.LogAttrs(context.Background(), slog.LevelError, "change dead letters", append(attrs, slog.Any(logKeyErr, err))...)
		writeError(ctx, err)
		return
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "changed dead letters", attrs...)
	b, _ := json.Marshal(DLQCount{Count: n})
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// DLQCount is the answer of POST /admin/dlq/replay and /admin/dlq/purge.
type DLQCount struct {
	Count int `json:"count"` // dead letters replayed or purged
}

// handleAdmin serves the admin listener: everything but events.
func (s *Server) handleAdmin(ctx *fasthttp.RequestCtx) {
	defer s.recoverPanic(ctx)
	s.serveAdmin(ctx, true)
}

// serveAdmin serves the non-event paths; with all false, only the probes.
func (s *Server) serveAdmin(ctx *fasthttp.RequestCtx, all bool) {
	path := string(ctx.Path())
	if !all && path != "/healthz" && path != "/readyz" {
		writeError(ctx, errNotFound)
		return
	}
	switch path {
	case "/healthz":
		if onlyGet(ctx) {
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("ok\n")
		}
	case "/readyz":
		s.handleReady(ctx)
	case "/metrics":
		if s.opts.Metrics == nil {
			writeError(ctx, errNotFound)
		} else if onlyGet(ctx) {
			s.opts.Metrics(ctx)
		}
	case "/admin/status":
		s.handleStatus(ctx)
	case "/admin/events":
		s.handleTail(ctx)
	case "/ui":
		s.handleUI(ctx)
	case "/admin/dlq":
		s.handleDLQList(ctx)
	case "/admin/dlq/replay":
		s.handleDLQChange(ctx, "replay")
	case "/admin/dlq/purge":
		s.handleDLQChange(ctx, "purge")
	default:
		writeError(ctx, errNotFound)
	}
}

// recoverPanic keeps a bug in one request from taking down the sidecar,
// and with it every other app request.
func (s *Server) recoverPanic(ctx *fasthttp.RequestCtx) {
	if r := recover(); r != nil {
		s.log.LogAttrs(context.Background(), slog.LevelError, "handler panic",
			slog.String(logKeyPath, string(ctx.Path())),
			slog.Any(logKeyPanic, r), slog.String(logKeyStack, string(debug.Stack())))
		ctx.Response.ResetBody()
		writeError(ctx, fmt.Errorf("panic: %v", r))
	}
}

func (s *Server) handleReady(ctx *fasthttp.RequestCtx) {
	if !onlyGet(ctx) {
		return
	}
	ctx.SetContentType("text/plain; charset=utf-8")
	reason := ""
	if s.closing.Load() {
		reason = "shutting down"
	} else if err := s.sp.Ready(); err != nil {
		reason = err.Error()
	}
	if reason == "" {
		ctx.SetBodyString("ok\n")
		return
	}
	ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, retryAfter)
	ctx.SetBodyString("not ready: " + reason + "\n")
}
