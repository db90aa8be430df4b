package proxy

import (
	"bytes"
	"errors"
	"io"
	"strconv"

	"github.com/valyala/fasthttp"
)

// readBody returns the request body, inflated if it is gzip, never longer
// than limit: over it the request is refused whole, since a Segment SDK
// resends a refused batch unchanged and a partial store would duplicate.
// The result aliases ctx or in and is valid until the handler returns.
func (in *ingest) readBody(ctx *fasthttp.RequestCtx, limit int, tooLarge error) ([]byte, error) {
	raw := ctx.Request.Body()
	if len(raw) > limit {
		return nil, tooLarge
	}
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
	buf := in.inflate[:0]
	if want := min(limit+1, max(4*len(raw), 64<<10)); cap(buf) < want {
		buf = make([]byte, 0, want)
	}
	for {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(2*cap(buf), limit+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := in.zr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			in.inflate = buf[:0]
			return nil, tooLarge
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			in.inflate = buf[:0]
			return nil, badRequest(errInvalidGzip, "body is not valid gzip: "+err.Error())
		}
	}
	in.inflate = buf[:0]
	return buf, nil
}
