package forwarders

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// Forwarder delivers batches to one destination. The Dispatcher calls Send
// from up to the destination's concurrency goroutines at once.
//
// Send returns nil when every record was delivered; otherwise an error the
// dispatcher classifies: *RejectedError (the data is refused: it is split
// and the refused records dead-lettered), *MisconfiguredError (retried
// slowly, never dead-lettered), *BatchError (record by record, for kinds
// that can fail partially), and anything else is retried with backoff.
// Send must return promptly once ctx is cancelled.
type Forwarder interface {
	Kind() string
	Send(ctx context.Context, batch []spool.Record) error
	Close(ctx context.Context) error
}

// newForwarder builds the forwarder of d's kind. It acquires what the kind
// needs (opens the file), so that a bad destination fails at start-up.
func newForwarder(d Destination) (Forwarder, error) {
	switch d.Kind {
	case KindSegment, KindWebhook:
		client, err := newHTTPClient(d)
		if err != nil {
			return nil, fmt.Errorf("destination %s: %w", d.Name, err)
		}
		if d.Kind == KindSegment {
			return newSegment(d, client), nil
		}
		return newWebhook(d, client), nil
	case KindStdout:
		return newStdout(d), nil
	case KindFile:
		return openFile(d)
	case KindKafka:
		return newKafka(d)
	case KindArchive:
		return newArchive(d)
	}
	return nil, fmt.Errorf("destination %s: unknown kind %q", d.Name, d.Kind)
}

const (
	// errorBodyLimit is how much of an error answer is kept: enough for a
	// message, bounded whatever the server sends.
	errorBodyLimit = 1 << 10
	// drainLimit bounds how much of an answer is read to reuse the
	// connection; past it, closing the connection is cheaper.
	drainLimit = 64 << 10
	userAgent  = "spillway"
)

// newHTTPClient returns a client of its own for one destination, so that a
// dead destination's connections and dial timeouts never hold up another's.
// It verifies the destination's certificate against the system's CAs and
// d.TLSCA, unless d.Insecure.
func newHTTPClient(d Destination) (*http.Client, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	dial := t.DialContext
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return copyConn{c}, nil
	}
	t.MaxIdleConnsPerHost = d.Concurrency
	t.IdleConnTimeout = 90 * time.Second
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: d.Insecure} // only ?insecure=true skips it
	if d.TLSCA != "" {
		// ParseDestination has read it already, so that a bad file is a
		// bad URL; reading it again here, where the pool is needed, also
		// covers destinations built by hand.
		pool, err := loadRootCAs(d.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("tls_ca: %w", err)
		}
		t.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{
		Transport: t,
		Timeout:   d.Timeout,
		// A followed 301/302 turns a POST into a GET without a body; a
		// redirect is reported as a misconfiguration instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// copyConn is a destination's connection that copies a request body
// through a recycled buffer. net/http sends a body as an io.Copy from an
// io.LimitReader, which hides the body's WriteTo, to the connection, whose
// ReadFrom then made a 32 KiB buffer for every request: 8% of what
// spillway allocated at W1. Over TLS the copy goes to a tls.Conn instead,
// which has no ReadFrom of its own.
type copyConn struct{ net.Conn }

var copyBuffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

func (c copyConn) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBuffers.Get().(*[32 << 10]byte)
	defer copyBuffers.Put(buf)
	// Only Write: a ReaderFrom here would be called back.
	return io.CopyBuffer(struct{ io.Writer }{c.Conn}, r, buf[:])
}

// requestBody is a delivery's body in a recycled buffer: encoded batches
// were the largest share of what a destination allocates. net/http may
// still read a request's body after Do returns, and re-reads it through
// GetBody to retry on a fresh connection, so the buffer goes back to the
// pool only when post and every reader over it are done with it.
type requestBody struct {
	buf  []byte
	refs atomic.Int32
}

// requestBodies holds free bodies, as many as a destination has requests
// in flight by default. Not a sync.Pool: that is emptied at every garbage
// collection, dozens of times a second at full load.
var requestBodies = make(chan *requestBody, DefaultConcurrency)

// newRequestBody returns an empty body held once, by its caller.
func newRequestBody() *requestBody {
	var b *requestBody
	select {
	case b = <-requestBodies:
		b.buf = b.buf[:0]
	default:
		b = new(requestBody)
	}
	b.refs.Store(1)
	return b
}

// dropRequestBodies lets go of the free bodies.
func dropRequestBodies() {
	for {
		select {
		case <-requestBodies:
		default:
			return
		}
	}
}

func (b *requestBody) reader() io.ReadCloser {
	b.refs.Add(1)
	return &bodyReader{Reader: bytes.NewReader(b.buf), body: b}
}

func (b *requestBody) release() {
	if b.refs.Add(-1) != 0 || cap(b.buf) > 4*DefaultBatchBytes { // an outsized batch is not kept
		return
	}
	select {
	case requestBodies <- b:
	default:
	}
}

type bodyReader struct {
	*bytes.Reader
	body   *requestBody
	closed atomic.Bool
}

func (r *bodyReader) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.body.release()
	}
	return nil
}

// post sends body, which it releases, and classifies the answer. Errors
// never hold the URL, which may carry an endpoint's token in its query.
func post(ctx context.Context, c *http.Client, target string, body *requestBody, header http.Header) error {
	defer body.release()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, http.NoBody)
	if err != nil {
		return fmt.Errorf("build request: %w", stripURL(err))
	}
	req.Body = body.reader()
	req.GetBody = func() (io.ReadCloser, error) { return body.reader(), nil }
	req.ContentLength = int64(len(body.buf))
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("post: %w", ctx.Err())
		}
		// An untrusted certificate will not become trusted by retrying
		// soon: it is a misconfiguration (a missing ?tls_ca=), retried
		// slowly and reported, the events kept.
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			return &MisconfiguredError{Err: fmt.Errorf("post: verify TLS certificate (a private CA needs ?tls_ca=): %w", stripURL(err))}
		}
		return &RetryableError{Err: fmt.Errorf("post: %w", stripURL(err))}
	}
	defer func() {
		_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
		_ = resp.Body.Close()
	}()
	cerr := classify(resp.StatusCode, resp.Header)
	if cerr == nil {
		return nil
	}
	msg, rerr := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
	if rerr != nil && len(msg) == 0 {
		msg = []byte("(body unreadable: " + stripURL(rerr).Error() + ")")
	}
	return withBody(cerr, string(bytes.ToValidUTF8(msg, []byte("?"))))
}

func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
