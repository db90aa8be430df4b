package forwarders

import (
	"context"
	"net/http"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// webhookForwarder posts each batch to a URL as a JSON array, NDJSON, or a
// Segment-shaped batch, uncompressed, since a generic endpoint may not
// accept gzip. Credentials in the URL (https://user:pass@host) are sent as
// Basic auth by net/http.
type webhookForwarder struct {
	target string
	format string
	ctype  string
	client *http.Client
	now    func() time.Time
}

var _ Forwarder = (*webhookForwarder)(nil)

func newWebhook(d Destination, client *http.Client) *webhookForwarder {
	ctype := "application/json"
	if d.Format == FormatNDJSON {
		ctype = "application/x-ndjson"
	}
	return &webhookForwarder{
		target: d.URL,
		format: d.Format,
		ctype:  ctype,
		client: client,
		now:    time.Now,
	}
}

func (f *webhookForwarder) Kind() string { return KindWebhook }

func (f *webhookForwarder) Send(ctx context.Context, batch []spool.Record) error {
	body := newRequestBody()
	body.buf = encodeBody(body.buf, f.format, batch, f.now())
	return post(ctx, f.client, f.target, body, http.Header{"Content-Type": {f.ctype}})
}

func (f *webhookForwarder) Close(context.Context) error {
	f.client.CloseIdleConnections()
	return nil
}
