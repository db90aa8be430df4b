package forwarders

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
	case KindSegment:
		return newSegment(d), nil
	case KindWebhook:
		return newWebhook(d), nil
	case KindStdout:
		return newStdout(d), nil
	case KindFile:
		return openFile(d)
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
func newHTTPClient(d Destination) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = d.Concurrency
	t.IdleConnTimeout = 90 * time.Second
	return &http.Client{
		Transport: t,
		Timeout:   d.Timeout,
		// A followed 301/302 turns a POST into a GET without a body; a
		// redirect is reported as a misconfiguration instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// post sends body and classifies the answer. Errors never hold the URL,
// which may carry an endpoint's token in its query.
func post(ctx context.Context, c *http.Client, target string, body []byte, header http.Header) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", stripURL(err))
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("post: %w", ctx.Err())
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
