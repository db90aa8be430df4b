package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

// nopSpool accepts everything at once, so benchmarks measure the proxy.
type nopSpool struct{}

func (nopSpool) SubmitFrom(string, []spool.Event, []spool.DeadLetter) (<-chan error, int, error) {
	return committed, 0, nil
}
func (nopSpool) Ready() error { return nil }

var committed = func() chan error { c := make(chan error); close(c); return c }()

// realisticEvent is about 750 bytes, shaped like what analytics-node sends
// for an e-commerce track.
func realisticEvent(i int) string {
	return fmt.Sprintf(`{"type":"track","event":"Order Completed","userId":"user_%08x","anonymousId":"5c1e2f4a-9b7d-4e3a-8c2f-%012x",`+
		`"messageId":"node-next-1714563600000-%08x-3b2a","timestamp":"2024-05-01T11:59:58.123Z",`+
		`"properties":{"orderId":"ord_%06d","total":129.99,"currency":"USD","coupon":null,"products":[`+
		`{"sku":"SKU-1","name":"Trail Shoe","price":89.99,"quantity":1},{"sku":"SKU-2","name":"Wool Sock","price":20,"quantity":2}]},`+
		`"context":{"library":{"name":"analytics-node","version":"2.1.0"},"ip":"203.0.113.7",`+
		`"userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",`+
		`"locale":"en-US","page":{"path":"/checkout","url":"https://shop.example.com/checkout","referrer":"https://shop.example.com/cart","title":"Checkout"}},`+
		`"integrations":{}}`, i, i, i, i)
}

func realisticBatch(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(realisticEvent(i))
	}
	b.WriteString(`],"sentAt":"2024-05-01T11:59:59.000Z"}`)
	return []byte(b.String())
}

// realisticBatchWithContext is realisticBatch with a batch-level context,
// as analytics-python sends: the fast path declines it.
func realisticBatchWithContext(n int) []byte {
	b := realisticBatch(n)
	b = bytes.TrimSuffix(b, []byte(`}`))
	return append(b, `,"context":{"library":{"name":"analytics-python","version":"2.3.2"}}}`...)
}

// batchRequest builds a RequestCtx that the handler can serve again and
// again, as fasthttp itself benchmarks handlers.
func batchRequest(tb testing.TB, body []byte) *fasthttp.RequestCtx {
	tb.Helper()
	var req fasthttp.Request
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("/v1/batch")
	req.Header.SetContentType("application/json")
	req.Header.Set(fasthttp.HeaderAuthorization, "Basic "+basicToken("wk_live_0123456789abcdef"))
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	return &ctx
}

func benchServer(tb testing.TB) *Server {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.WriteKeys = []string{"wk_live_0123456789abcdef"}
	s, err := New(cfg, nopSpool{}, Options{}, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func BenchmarkHandleBatch(b *testing.B) {
	for _, n := range []int{1, 100, 500} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s := benchServer(b)
			body := realisticBatch(n)
			if len(body) > DefaultMaxRequestBytes {
				b.Fatalf("batch of %d is %d bytes, over the request limit", n, len(body))
			}
			ctx := batchRequest(b, body)
			h := s.Handler()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				// The handler hands the body's buffer back once parsed, as
				// a server reading the next request from the wire refills it.
				ctx.Request.SetBody(body)
				h(ctx)
				if ctx.Response.StatusCode() != fasthttp.StatusOK {
					b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
				ctx.Response.Reset()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
		})
	}
}
