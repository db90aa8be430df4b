package forwarders

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// segmentForwarder posts to a Segment-compatible batch API (Segment,
// RudderStack, another spillway): gzipped {"batch":[...],"sentAt":...} to
// {host}/v1/batch, under each event's own write key.
type segmentForwarder struct {
	endpoint string
	writeKey string // overrides the events' keys when set
	client   *http.Client
	now      func() time.Time
}

var _ Forwarder = (*segmentForwarder)(nil)

func newSegment(d Destination, client *http.Client) *segmentForwarder {
	return &segmentForwarder{
		endpoint: d.URL + "/v1/batch",
		writeKey: d.WriteKey,
		client:   client,
		now:      time.Now,
	}
}

func (f *segmentForwarder) Kind() string { return KindSegment }

// Send posts one request per write key, since the API authenticates a whole
// request with one key. Requests go one after another: the batch is the
// unit of concurrency.
func (f *segmentForwarder) Send(ctx context.Context, batch []spool.Record) error {
	if f.writeKey != "" || sameWriteKey(batch) {
		key := f.writeKey
		if key == "" && len(batch) > 0 {
			key = batch[0].WriteKey
		}
		return f.post(ctx, key, batch)
	}
	return sendPerKey(ctx, batch, f.post)
}

// sendPerKey sends one request per write key of the batch, one after
// another, and returns the first failure per record, so that the records
// already delivered under other keys are not sent again. A send that
// fails record by record (a *BatchError over its records) keeps its
// records' own errors.
func sendPerKey(ctx context.Context, batch []spool.Record, send func(ctx context.Context, key string, recs []spool.Record) error) error {
	groups := groupByWriteKey(batch)
	var errs []error
	for _, g := range groups {
		err := send(ctx, batch[g[0]].WriteKey, pick(batch, g))
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return err
		}
		if errs == nil {
			errs = make([]error, len(batch))
		}
		var be *BatchError
		perRecord := errors.As(err, &be) && len(be.Errs) == len(g)
		for j, i := range g {
			if errs[i] = err; perRecord {
				errs[i] = be.Errs[j]
			}
		}
	}
	if errs == nil {
		return nil
	}
	return &BatchError{Errs: errs}
}

func (f *segmentForwarder) post(ctx context.Context, key string, recs []spool.Record) error {
	body := newRequestBody()
	var err error
	if body.buf, err = gzipSegmentBatch(body.buf, recs, f.now()); err != nil {
		body.release()
		return err
	}
	h := http.Header{
		"Content-Type":     {"application/json"},
		"Content-Encoding": {"gzip"},
		"Authorization":    {"Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"))},
	}
	return post(ctx, f.client, f.endpoint, body, h)
}

func (f *segmentForwarder) Close(context.Context) error {
	f.client.CloseIdleConnections()
	return nil
}

func sameWriteKey(batch []spool.Record) bool {
	for i := 1; i < len(batch); i++ {
		if batch[i].WriteKey != batch[0].WriteKey {
			return false
		}
	}
	return true
}

// groupByWriteKey returns the indexes of the batch's records per write key,
// in order of first appearance, each group in batch order.
func groupByWriteKey(batch []spool.Record) [][]int {
	var groups [][]int
	at := map[string]int{}
	for i := range batch {
		k := batch[i].WriteKey
		g, ok := at[k]
		if !ok {
			g = len(groups)
			at[k] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}

func pick(batch []spool.Record, idx []int) []spool.Record {
	out := make([]spool.Record, len(idx))
	for j, i := range idx {
		out[j] = batch[i]
	}
	return out
}
