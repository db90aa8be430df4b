package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// bodyStall is how long a request holds its parse token while its body is
// still arriving. Past it the token goes to the next request and the body
// is read without one, so a client trickling its body holds up others for
// this long once, not for the whole read timeout.
const bodyStall = 20 * time.Millisecond

// takeBody waits for a parse token, then reads the request's body into an
// ingest. Bodies are read only once parsing may start: read as they came,
// every request waiting its turn held its whole body in the heap, 8 MB at
// 64 connections of 100-event batches, and with that much less room the
// collector ran five times as often. Waiting, a body stays in the socket.
// It returns holding a token, whatever the error.
func (s *Server) takeBody(ctx *fasthttp.RequestCtx) (*ingest, []byte, error) {
	limit := s.cfg.MaxRequestBytes
	s.parsing <- struct{}{}
	in := s.ingest.Get().(*ingest)
	stream := ctx.RequestBodyStream()
	if stream == nil {
		// Read whole already: a handler called without a listener.
		raw := ctx.Request.Body()
		if len(raw) > limit {
			return in, nil, s.errRequestTooLarge
		}
		return in, raw, nil
	}
	size := ctx.Request.Header.ContentLength()
	if size > limit {
		// Refused unread: fasthttp drains a little of it, or closes.
		return in, nil, s.errRequestTooLarge
	}
	if in.stall == nil {
		in.stall = time.AfterFunc(bodyStall, s.yieldParsing)
	} else {
		in.stall.Reset(bodyStall)
	}
	raw, err := in.fill(stream, size, limit, s.errRequestTooLarge)
	if !in.stall.Stop() {
		// Slow: its token went to another request. Parsing takes one again.
		s.parsing <- struct{}{}
	}
	return in, raw, err
}

func (s *Server) yieldParsing() {
	s.slowBodies.Add(1)
	<-s.parsing
}

// fill reads a body of size bytes (-1: chunked, unknown) into in.raw,
// refusing more than limit.
func (in *ingest) fill(r io.Reader, size, limit int, tooLarge error) ([]byte, error) {
	want := size + 1 // room for the end to be read as such
	if size < 0 {
		want = 64 << 10
	}
	buf, over, err := readUpTo(r, in.raw, want, limit)
	in.raw = buf[:0]
	switch {
	case over:
		return nil, tooLarge
	case err != nil:
		return nil, bodyReadError(err)
	}
	return buf, nil
}

// readUpTo reads r to its end into buf's memory, made at least want
// bytes (at most limit+1) and grown to limit+1 at most: over reports more
// than limit bytes, and no more are read. err is a read's error other
// than io.EOF. buf comes back, whatever it holds, so that its memory is
// kept for the next read.
func readUpTo(r io.Reader, buf []byte, want, limit int) (_ []byte, over bool, err error) {
	buf = buf[:0]
	if want = min(want, limit+1); cap(buf) < want {
		buf = make([]byte, 0, want)
	}
	for {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(2*cap(buf), limit+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			return buf, true, nil
		}
		if errors.Is(err, io.EOF) {
			return buf, false, nil
		}
		if err != nil {
			return buf, false, err
		}
	}
}

// bodyReadError is how a body that stopped arriving is answered. The
// connection is closed after the answer: where the next request would
// start is unknown.
func bodyReadError(err error) error {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return errBodyTimeout
	}
	return badRequest(errIncompleteBody, "the body ended before all of it was read: "+err.Error())
}

// decodeBody returns the request's body raw, inflated if it is gzip,
// never longer than limit: over it the request is refused whole, since a
// Segment SDK resends a refused batch unchanged and a partial store would
// duplicate. The result aliases raw or in.
func (in *ingest) decodeBody(ctx *fasthttp.RequestCtx, raw []byte, limit int, tooLarge error) ([]byte, error) {
	enc := ctx.Request.Header.ContentEncoding()
	switch {
	case len(enc) == 0, bytes.EqualFold(enc, []byte("identity")):
		return raw, nil
	case bytes.EqualFold(enc, []byte("gzip")), bytes.EqualFold(enc, []byte("x-gzip")):
		return in.gunzip(raw, limit, tooLarge)
	default:
		return nil, badRequest(errUnsupportedEncoding,
			"Content-Encoding "+strconv.Quote(string(enc))+" is not supported; send gzip or no encoding")
	}
}

// gunzip inflates raw into a buffer that grows to limit+1 bytes at most: a
// gzip bomb costs that much memory and the time to inflate that much, then
// is refused; the rest of it is never inflated.
func (in *ingest) gunzip(raw []byte, limit int, tooLarge error) ([]byte, error) {
	in.br.Reset(raw)
	defer in.br.Reset(nil) // keep no reference to the request's memory
	if err := in.zr.Reset(&in.br); err != nil {
		return nil, badRequest(errInvalidGzip, "body is not valid gzip: "+err.Error())
	}
	buf, over, err := readUpTo(&in.zr, in.inflate, max(4*len(raw), 64<<10), limit)
	in.inflate = buf[:0]
	switch {
	case over:
		return nil, tooLarge
	case err != nil:
		return nil, badRequest(errInvalidGzip, "body is not valid gzip: "+err.Error())
	}
	return buf, nil
}
