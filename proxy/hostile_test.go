package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fastjson"
)

// errorAnswer is the body of every refusal.
type errorAnswer struct {
	Success *bool  `json:"success"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// TestHostileBodies sends every kind of hostile body the edge may receive
// and checks that each gets its 400 with a message naming the problem, is
// counted under its code, stores nothing, and leaves the server healthy.
//
// Choices: a repeated key is not refused; the last one wins, as in Segment's
// API (encoding/json), JavaScript and Python, and only it is stored, so
// every consumer reads what was validated. Invalid UTF-8 is refused: JSON
// is UTF-8 (RFC 8259) and no SDK sends anything else. A number beyond
// float64's range is refused, as Segment's API refuses it. A huge string is
// refused only by the size limits. Nesting stops at fastjson's depth limit
// of 300, before anything recurses deeper.
func TestHostileBodies(t *testing.T) {
	small := func(c *Config) {
		c.MaxEventBytes = 1000
		c.MaxRequestBytes = 4000
		c.MaxBatchEvents = 3
	}
	ev := `{"type":"track","userId":"u","event":"e"}`
	batchOf := func(n int) string { return `{"batch":[` + strings.TrimSuffix(strings.Repeat(ev+",", n), ",") + `]}` }

	tests := []struct {
		scenario string
		cfg      func(*Config)
		path     string // default /v1/batch
		body     []byte
		headers  []string
		status   int
		code     string
		message  string // the exact message, or its start when it ends in "…"
	}{
		{scenario: "an empty body", path: "/v1/track",
			status: 400, code: "invalid_json", message: "body is empty"},
		{scenario: "an empty batch body",
			status: 400, code: "invalid_json", message: "body is empty"},
		{scenario: "a body that is not JSON", body: []byte(`userId=u&event=e`),
			status: 400, code: "invalid_json", message: "body is not valid JSON: …"},
		{scenario: "a truncated JSON body", body: []byte(`{"batch":[{"type":"track",`),
			status: 400, code: "invalid_json", message: "body is not valid JSON: …"},
		{scenario: "JSON with a trailing garbage", path: "/v1/track", body: []byte(`{"userId":"u","event":"e"}}`),
			status: 400, code: "invalid_json", message: "body is not valid JSON: …"},
		{scenario: "JSON that is not an object", path: "/v1/track", body: []byte(`null`),
			status: 400, code: "invalid_json", message: "body must be a JSON object"},
		{scenario: "invalid UTF-8 in a string", path: "/v1/track", body: []byte("{\"userId\":\"\xff\xfe\",\"event\":\"e\"}"),
			status: 400, code: "invalid_json", message: "body is not valid UTF-8 (at byte 11)"},
		{scenario: "a UTF-8-encoded surrogate", path: "/v1/track", body: []byte("{\"userId\":\"u\",\"event\":\"\xed\xa0\x80\"}"),
			status: 400, code: "invalid_json", message: "body is not valid UTF-8 (at byte 23)"},
		{scenario: "an overlong UTF-8 encoding of a quote", path: "/v1/track", body: []byte("{\"userId\":\"u\xc0\xa2,\"event\":\"e\"}"),
			status: 400, code: "invalid_json", message: "body is not valid UTF-8 (at byte 12)"},
		{scenario: "arrays nested 400,000 deep", path: "/v1/track",
			body:   []byte(`{"userId":"u","event":"e","properties":{"p":` + strings.Repeat("[", 400_000) + strings.Repeat("]", 400_000) + `}}`),
			cfg:    func(c *Config) { c.MaxRequestBytes, c.MaxEventBytes = 1<<20, 1<<20 },
			status: 400, code: "invalid_json", message: "body is not valid JSON: cannot parse JSON: too big depth for the nested JSON; it exceeds 300…"},
		{scenario: "objects nested 100,000 deep and never closed", path: "/v1/track",
			body:   []byte(`{"userId":"u","event":"e","properties":` + strings.Repeat(`{"a":`, 100_000)),
			status: 400, code: "invalid_json", message: "body is not valid JSON: cannot parse JSON: too big depth for the nested JSON; it exceeds 300…"},
		{scenario: "a number beyond float64", path: "/v1/track", body: []byte(`{"userId":"u","event":"e","properties":{"n":1e400}}`),
			status: 400, code: "invalid_json", message: "event 0: number is out of the range of a 64-bit float"},
		{scenario: "a negative number beyond float64", body: []byte(`{"batch":[` + ev + `,{"type":"track","userId":"u","event":"e","properties":{"n":-1.5e309}}]}`),
			status: 400, code: "invalid_json", message: "event 1: number is out of the range of a 64-bit float"},
		{scenario: "a 20,000-digit integer", path: "/v1/track", body: []byte(`{"userId":"u","event":"e","properties":{"n":` + strings.Repeat("9", 20_000) + `}}`),
			status: 400, code: "invalid_json", message: "event 0: number is out of the range of a 64-bit float"},
		{scenario: "a number out of range in the batch-level context", body: []byte(`{"context":{"n":1e999},"batch":[` + ev + `]}`),
			status: 400, code: "invalid_json", message: "context: number is out of the range of a 64-bit float"},
		{scenario: "a bad number under a key a later one overrides", path: "/v1/track", body: []byte(`{"userId":"u","event":"e","n":01,"n":1}`),
			status: 400, code: "invalid_json", message: "event 0: invalid number"},
		{scenario: "a bad number in a batch-level field nothing reads", body: []byte(`{"batch":[` + ev + `],"extra":{"n":-01}}`),
			status: 400, code: "invalid_json", message: "body: invalid number"},
		{scenario: "a bad number in a batch a later one overrides", body: []byte(`{"batch":[{"n":01}],"batch":[` + ev + `]}`),
			status: 400, code: "invalid_json", message: "body: invalid number"},
		{scenario: "an escape JSON does not have", path: "/v1/track", body: []byte(`{"userId":"u","event":"a\qb"}`),
			status: 400, code: "invalid_json", message: "body is not valid JSON: invalid escape \\q at byte 24"},
		{scenario: "a \\u escape without four hex digits", path: "/v1/track", body: []byte(`{"userId":"u","event":"\u12"}`),
			status: 400, code: "invalid_json", message: "body is not valid JSON: invalid escape at byte 23: \\u needs four hex digits"},
		{scenario: "a number JSON does not allow", path: "/v1/track", body: []byte(`{"userId":"u","event":"e","properties":{"n":0x10}}`),
			status: 400, code: "invalid_json", message: "body is not valid JSON: …"},
		{scenario: "a huge string", path: "/v1/track", body: []byte(`{"userId":"u","event":"e","properties":{"s":"` + strings.Repeat("x", 400<<10) + `"}}`),
			status: 400, code: "too_large", message: "event 0 is over --max-event-bytes (32768 bytes)"},
		{scenario: "a huge key", path: "/v1/track", body: []byte(`{"userId":"u","event":"e","properties":{"` + strings.Repeat("k", 100<<10) + `":1}}`),
			status: 400, code: "too_large", message: "event 0 is over --max-event-bytes (32768 bytes)"},
		{scenario: "an event over --max-event-bytes, with --strict", cfg: func(c *Config) { small(c); c.Strict = true },
			body:   []byte(`{"batch":[` + ev + `,{"type":"track","userId":"u","event":"` + strings.Repeat("x", 1000) + `"}]}`),
			status: 400, code: "too_large", message: "event 1 is over --max-event-bytes (1000 bytes)"},
		{scenario: "a body over --max-request-bytes", cfg: small,
			body:   []byte(`{"batch":[` + ev + `],"pad":"` + strings.Repeat("x", 4000) + `"}`),
			status: 400, code: "too_large", message: "request body is over --max-request-bytes (4000 bytes)"},
		{scenario: "a batch-level context that would be copied into each event past the output bound",
			cfg:    func(c *Config) { c.MaxRequestBytes, c.MaxEventBytes, c.MaxBatchEvents = 40_000, 40_000, 2500 },
			body:   []byte(`{"context":{"p":"` + strings.Repeat("x", 30_000) + `"},"batch":[` + strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"e"},`, 22), ",") + `]}`),
			status: 400, code: "too_large", message: "batch is over 640000 bytes once batch-level context is merged into its events"},
		{scenario: "more events than --max-batch-events", cfg: small, body: []byte(batchOf(4)),
			status: 400, code: "too_large", message: "batch is over --max-batch-events (3 events)"},
		{scenario: "more events than the default --max-batch-events", body: []byte(batchOf(2501)),
			status: 400, code: "too_large", message: "batch is over --max-batch-events (2500 events)"},
		{scenario: "a 1 GiB gzip bomb, let in by a 2 MiB wire limit, cut off at the limit",
			cfg:     func(c *Config) { c.MaxRequestBytes = 2 << 20 },
			body:    gzipBomb(t, 1024, 2<<20),
			headers: []string{"Content-Encoding: gzip"},
			status:  400, code: "too_large", message: "request body is over --max-request-bytes (2097152 bytes)"},
		{scenario: "a 400 MiB gzip bomb under the default limits, cut off at the limit",
			body:    gzipBomb(t, 400, DefaultMaxRequestBytes),
			headers: []string{"Content-Encoding: gzip"},
			status:  400, code: "too_large", message: "request body is over --max-request-bytes (512000 bytes)"},
		{scenario: "gzip announced but not sent", body: []byte(ev), headers: []string{"Content-Encoding: gzip"},
			status: 400, code: "invalid_gzip", message: "body is not valid gzip: gzip: invalid header"},
		{scenario: "a truncated gzip body", body: gzipped(t, []byte(batchOf(1)))[:20], headers: []string{"Content-Encoding: gzip"},
			status: 400, code: "invalid_gzip", message: "body is not valid gzip: …"},
		{scenario: "a gzip body that is not JSON", body: gzipped(t, []byte("<xml/>")), headers: []string{"Content-Encoding: gzip"},
			status: 400, code: "invalid_json", message: "body is not valid JSON: …"},
		{scenario: "a gzip body that is not UTF-8", path: "/v1/track", body: gzipped(t, []byte("{\"userId\":\"\x80\"}")), headers: []string{"Content-Encoding: gzip"},
			status: 400, code: "invalid_json", message: "body is not valid UTF-8 (at byte 11)"},
		{scenario: "an unsupported Content-Encoding", body: []byte(ev), headers: []string{"Content-Encoding: br"},
			status: 400, code: "unsupported_encoding", message: `Content-Encoding "br" is not supported; send gzip or no encoding`},
		{scenario: "deflate, which is not gzip", body: []byte(ev), headers: []string{"Content-Encoding: deflate"},
			status: 400, code: "unsupported_encoding", message: `Content-Encoding "deflate" is not supported; send gzip or no encoding`},
		{scenario: "gzip applied twice", body: gzipped(t, gzipped(t, []byte(batchOf(1)))), headers: []string{"Content-Encoding: gzip, gzip"},
			status: 400, code: "unsupported_encoding", message: `Content-Encoding "gzip, gzip" is not supported; send gzip or no encoding`},
		{scenario: "a batch that is missing", body: []byte(`{"writeKey":"k"}`),
			status: 400, code: "empty_batch", message: "batch is missing"},
		{scenario: "a batch that is empty", body: []byte(`{"batch":[]}`),
			status: 400, code: "empty_batch", message: "batch is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			cfg := DefaultConfig()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			h := newHarness(t, cfg)
			path := tt.path
			if path == "" {
				path = "/v1/batch"
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			a := h.do(t, http.MethodPost, path, tt.body, tt.headers...)
			took := time.Since(start)
			runtime.ReadMemStats(&after)

			if a.status != tt.status {
				t.Fatalf("status = %d, want %d (body %s)", a.status, tt.status, a.body)
			}
			var ans errorAnswer
			if err := json.Unmarshal(a.body, &ans); err != nil || ans.Success == nil || *ans.Success {
				t.Fatalf("answer %s is not Segment's error shape: %v", a.body, err)
			}
			if ans.Code != tt.code {
				t.Errorf("code = %q, want %q", ans.Code, tt.code)
			}
			if prefix, ok := strings.CutSuffix(tt.message, "…"); ok {
				if !strings.HasPrefix(ans.Message, prefix) {
					t.Errorf("message = %q, want it to start with %q", ans.Message, prefix)
				}
			} else if ans.Message != tt.message {
				t.Errorf("message = %q, want %q", ans.Message, tt.message)
			}
			if len(ans.Message) > 300 {
				t.Errorf("message is %d bytes: it must name the problem, not echo the body", len(ans.Message))
			}
			h.sp.wantNoCalls(t)
			wantOnlyError(t, h, tt.code)
			// Client and server share this process: together they must stay
			// far below what inflating or copying the hostile body would take.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("allocated %d MiB answering it, want < 64 MiB", alloc>>20)
			}
			t.Logf("answered in %v, %d KiB allocated in the process", took.Round(time.Microsecond), (after.TotalAlloc-before.TotalAlloc)>>10)
			wantHealthy(t, h)
		})
	}
}

// wantOnlyError checks that the refusal was counted once under code and
// that no event was counted as received or rejected.
func wantOnlyError(t *testing.T, h *harness, code string) {
	t.Helper()
	for c, m := range h.s.m.errors {
		want := 0.0
		if c == code {
			want = 1
		}
		if got := testutil.ToFloat64(m); got != want {
			t.Errorf("spillway_request_errors_total{code=%q} = %v, want %v", c, got, want)
		}
	}
	for r, m := range h.s.m.rejected {
		if got := testutil.ToFloat64(m); got != 0 {
			t.Errorf("spillway_events_rejected_total{reason=%q} = %v, want 0: no event of a refused request is counted", r, got)
		}
	}
	for ep := range numEndpoints {
		if got := testutil.ToFloat64(h.s.m.received[ep]); got != 0 {
			t.Errorf("spillway_events_received_total{endpoint=%q} = %v, want 0", endpointNames[ep], got)
		}
	}
}

// wantHealthy checks that the server still answers and stores.
func wantHealthy(t *testing.T, h *harness) {
	t.Helper()
	if a := h.do(t, http.MethodGet, "/healthz", nil); a.status != http.StatusOK {
		t.Fatalf("/healthz = %d after a hostile request", a.status)
	}
	before := len(h.sp.Calls())
	if a := h.post(t, "/v1/track", `{"userId":"u","event":"after"}`); a.status != http.StatusOK {
		t.Fatalf("a good request after a hostile one = %d %s", a.status, a.body)
	}
	if len(h.sp.Calls()) != before+1 {
		t.Fatal("a good request after a hostile one was not stored")
	}
}

// TestRepeatedKeysLastWins: a repeated key is stored once, with its last
// value, at every depth, so every consumer reads what was validated.
func TestRepeatedKeysLastWins(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	body := `{"context":{"ip":"1.1.1.1","ip":"2.2.2.2","app":{"v":1}},"batch":[` +
		`{"type":"alias","type":"track","userId":"x","userId":"u","event":"e","messageId":"m0","messageId":"m1",` +
		`"properties":{"a":1,"b":{"c":1,"c":2},"a":[{"d":1,"d":{"e":1,"e":2}}]},"context":{"app":{"v":2},"app":{"v":3}}}]}`
	a := h.post(t, "/v1/batch", body)
	wantAnswer(t, a, http.StatusOK, "success.json")
	c := h.sp.onlyCall(t)
	if len(c.events) != 1 || len(c.dead) != 0 {
		t.Fatalf("%d events, %d dead letters; want the event valid as a track", len(c.events), len(c.dead))
	}
	data := c.events[0].Data
	checkUniqueKeys(t, data)
	got := decode(t, data)
	want := map[string]any{
		"type": "track", "userId": "u", "messageId": "m1",
		"properties": map[string]any{"b": map[string]any{"c": 2.0}, "a": []any{map[string]any{"d": map[string]any{"e": 2.0}}}},
		"context":    map[string]any{"app": map[string]any{"v": 3.0}, "ip": "2.2.2.2"},
	}
	for k, v := range want {
		if !reflect.DeepEqual(got[k], v) {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

// TestRepeatedKeysEveryPlacement checks the writer against encoding/json
// (last wins) for every object of up to six fields over keys that repeat,
// that differ only inside (the same length, first and last bytes) and that
// are escaped differently but equal.
func TestRepeatedKeysEveryPlacement(t *testing.T) {
	alphabet := []string{"abcd", "axcd", "a", `\u0061`}
	var p fastjson.Parser
	var walk func(keys []string, depth int)
	walk = func(keys []string, depth int) {
		if len(keys) > 0 {
			var b strings.Builder
			b.WriteByte('{')
			for i, k := range keys {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"%s":{"i":%d,"i":%d}`, k, i, i+1)
			}
			b.WriteByte('}')
			v, err := p.Parse(b.String())
			if err != nil {
				t.Fatal(err)
			}
			o, _ := v.Object()
			out := appendObject(nil, o)
			var got, want map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("%s written as invalid JSON %s: %v", b.String(), out, err)
			}
			_ = json.Unmarshal([]byte(b.String()), &want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s written as %s", b.String(), out)
			}
			if k, _ := repeatedKey(out); k != "" {
				t.Fatalf("%s written as %s, repeating %q", b.String(), out, k)
			}
		}
		if depth > 0 {
			for _, k := range alphabet {
				walk(append(keys[:len(keys):len(keys)], k), depth-1)
			}
		}
	}
	walk(nil, 6)
}

// TestRepeatedKeysAtEveryLevelStayLinear guards against rewriting: an
// object written again when a repeated key shows up would write its nested
// objects again too, 2^depth times over.
func TestRepeatedKeysAtEveryLevelStayLinear(t *testing.T) {
	for _, pair := range [][2]string{{`"y":0,"y":1`, "repeated keys"}, {`"abcd":0,"axcd":1`, "keys alike but for a middle byte"}} {
		t.Run(pair[1], func(t *testing.T) {
			const depth = 290
			body := `{"userId":"u","event":"e","properties":` + strings.Repeat(`{"x":`, depth) + `1` + strings.Repeat(`,`+pair[0]+`}`, depth) + `}`
			h := newHarness(t, DefaultConfig())
			// Rewriting would take 2^290 steps: no answer would ever come,
			// and the client's patience fails the test. A bound on the
			// time taken would add only a guess at this machine's speed.
			a := h.post(t, "/v1/track", body)
			if a.status != http.StatusOK {
				t.Fatalf("status %d: %s", a.status, a.body)
			}
			checkUniqueKeys(t, h.sp.onlyCall(t).events[0].Data)
		})
	}
}

// rawConn is a client on a real socket that writes bytes as they are.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, h *harness) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

// answer reads one answer, failing the test if none comes.
func (c *rawConn) answer(t *testing.T) (int, http.Header, []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(patience(t)))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

// closed reports whether the server closes the connection, reading and
// dropping whatever it sends first; false if the test ran out of patience.
func (c *rawConn) closed(t *testing.T) bool {
	_ = c.SetReadDeadline(time.Now().Add(patience(t)))
	_, err := io.Copy(io.Discard, c.r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

func TestHostileRequests(t *testing.T) {
	huge := strings.Repeat("x", 16<<10)
	tests := []struct {
		scenario string
		request  string
		status   int
		code     string // of the JSON answer; "" for fasthttp's own text answers
	}{
		{"an unknown path is 404", "GET /wp-login.php HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"},
		{"an unknown API version is 404", "POST /v2/track HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 404, "not_found"},
		{"a GET of an event endpoint is 405", "GET /v1/track HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"},
		{"a PUT of a batch is 405", "PUT /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405, "method_not_allowed"},
		{"a made-up method is 405", "BREW /v1/t HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"},
		{"a DELETE of /metrics is 405", "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"},
		{"a POST of a probe is 405", "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "method_not_allowed"},
		{"an oversized header is 431", "POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Pad: " + huge + "\r\n\r\n", 431, ""},
		{"thousands of small headers are 431", "POST /v1/track HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 3000) + "\r\n", 431, ""},
		{"an oversized request line is 431", "GET /v1/track?" + huge + " HTTP/1.1\r\nHost: x\r\n\r\n", 431, ""},
		{"a TLS handshake on the plain port is 400", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + strings.Repeat("\x00", 40) + "\r\n\r\n", 400, ""},
		{"a request line that is not HTTP is 400", "HELLO\r\n\r\n", 400, ""},
		{"a negative Content-Length is 400", "POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			h := newHarness(t, DefaultConfig())
			c := dialRaw(t, h)
			if _, err := io.WriteString(c, tt.request); err != nil {
				t.Fatal(err)
			}
			status, _, body := c.answer(t)
			if status != tt.status {
				t.Fatalf("status = %d, want %d (%s)", status, tt.status, body)
			}
			if tt.code != "" {
				var ans errorAnswer
				if err := json.Unmarshal(body, &ans); err != nil || ans.Code != tt.code {
					t.Errorf("answer %s, want code %q", body, tt.code)
				}
			}
			h.sp.wantNoCalls(t)
			wantHealthy(t, h)
		})
	}
}

// TestSlowClients: a client that trickles its request, or opens a
// connection and sends nothing, is cut off by the read timeout; an idle
// keep-alive connection by the idle timeout. Timeouts are shortened. The
// timeouts are fasthttp's, on a real socket and the real clock, so the
// test bounds nothing by this machine's speed: a connection is cut off if
// the server closes it while its client still has bytes to send, and not
// before the timeout counted from before the server could start it.
func TestSlowClients(t *testing.T) {
	const readTimeout, idleTimeout = 400 * time.Millisecond, 600 * time.Millisecond
	cfg := DefaultConfig()
	cfg.ReadTimeout, cfg.IdleTimeout = readTimeout, idleTimeout
	wantCutOff := func(t *testing.T, c *rawConn, from time.Time, timeout time.Duration) {
		t.Helper()
		if !c.closed(t) {
			t.Fatalf("connection still open %v after the %v timeout", time.Since(from), timeout)
		}
		if took := time.Since(from); took < timeout-50*time.Millisecond {
			t.Errorf("cut off after %v, before the %v timeout", took, timeout)
		}
	}
	// trickle writes one byte of s every step until the server stops
	// reading or s ends, and returns whether it ended. Either string takes
	// the client seconds to send, many times the read timeout.
	trickle := func(c *rawConn, s string, step time.Duration, stop <-chan struct{}) bool {
		for i := range len(s) {
			select {
			case <-stop:
				return false
			case <-time.After(step):
			}
			if _, err := c.Write([]byte{s[i]}); err != nil {
				return false
			}
		}
		return true
	}
	trickled := func(t *testing.T, h *harness, head, slow string, from time.Time) {
		t.Helper()
		c := dialRaw(t, h)
		io.WriteString(c, head)
		stop := make(chan struct{})
		var done sync.WaitGroup
		var finished bool
		done.Go(func() { finished = trickle(c, slow, 20*time.Millisecond, stop) })
		wantCutOff(t, c, from, readTimeout)
		close(stop)
		done.Wait()
		if finished {
			t.Error("the client sent it all: the server waited for the whole slow request")
		}
		h.sp.wantNoCalls(t)
	}

	t.Run("a header trickled byte by byte (slowloris) is cut off", func(t *testing.T) {
		h := newHarness(t, cfg)
		trickled(t, h, "", "POST /v1/track HTTP/1.1\r\nHost: x\r\n"+strings.Repeat("X-Slow: 1\r\n", 1000), time.Now())
		wantHealthy(t, h)
	})
	t.Run("a body trickled byte by byte is cut off", func(t *testing.T) {
		h := newHarness(t, cfg)
		body := `{"userId":"u","event":"` + strings.Repeat("x", 2000) + `"}`
		head := fmt.Sprintf("POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", len(body))
		trickled(t, h, head, body, time.Now())
	})
	t.Run("a connection that sends nothing is closed", func(t *testing.T) {
		h := newHarness(t, cfg)
		start := time.Now()
		c := dialRaw(t, h)
		wantCutOff(t, c, start, readTimeout)
	})
	t.Run("an idle keep-alive connection is closed", func(t *testing.T) {
		h := newHarness(t, cfg)
		c := dialRaw(t, h)
		body := `{"userId":"u","event":"e"}`
		// The connection is idle from the answer on, which comes after this.
		sent := time.Now()
		fmt.Fprintf(c, "POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		if status, _, b := c.answer(t); status != http.StatusOK {
			t.Fatalf("status %d: %s", status, b)
		}
		wantCutOff(t, c, sent, idleTimeout)
	})
	t.Run("a keep-alive connection in use is not cut off", func(t *testing.T) {
		h := newHarness(t, cfg)
		c := dialRaw(t, h)
		body := `{"userId":"u","event":"e"}`
		for range 5 {
			time.Sleep(readTimeout / 2)
			fmt.Fprintf(c, "POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			if status, _, b := c.answer(t); status != http.StatusOK {
				t.Fatalf("status %d: %s", status, b)
			}
		}
	})
}

// TestMaxConns: past --max-conns, a new connection is answered 503 and
// closed at once, while the connections served go on; once one closes, a
// new one is served again.
func TestMaxConns(t *testing.T) {
	const maxConns = 4
	cfg := DefaultConfig()
	cfg.MaxConns = maxConns
	h := newHarness(t, cfg)
	body := `{"userId":"u","event":"e"}`
	request := fmt.Sprintf("POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	var conns []*rawConn
	for range maxConns {
		c := dialRaw(t, h)
		io.WriteString(c, request)
		if status, _, b := c.answer(t); status != http.StatusOK {
			t.Fatalf("status %d: %s", status, b)
		}
		conns = append(conns, c) // kept open, idle
	}
	over := dialRaw(t, h)
	io.WriteString(over, request)
	if status, _, b := over.answer(t); status != http.StatusServiceUnavailable {
		t.Fatalf("connection %d: status %d, want 503 (%s)", maxConns+1, status, b)
	}
	if !over.closed(t) {
		t.Error("the refused connection was left open")
	}
	// The connections served are unaffected.
	for i, c := range conns {
		io.WriteString(c, request)
		if status, _, _ := c.answer(t); status != http.StatusOK {
			t.Fatalf("served connection %d: status %d", i, status)
		}
	}
	conns[0].Close()
	// The server frees the slot once it has seen the close, a moment
	// later: a new connection may be refused until then.
	deadline := time.Now().Add(patience(t))
	for {
		c := dialRaw(t, h)
		io.WriteString(c, request)
		status, _, _ := c.answer(t)
		c.Close()
		if status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of %d closed: %d", maxConns, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(h.sp.Calls()); n != 2*maxConns+1 {
		t.Errorf("%d requests stored, want %d: the refused one must not be", n, 2*maxConns+1)
	}
}

// TestSecureErrorLogs: fasthttp's own log lines never quote a request it
// failed to parse, which would put the write key in the logs.
func TestSecureErrorLogs(t *testing.T) {
	s, err := New(DefaultConfig(), &fakeSpool{}, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.srv.SecureErrorLogMessage || !s.adminSrv.SecureErrorLogMessage {
		t.Fatal("SecureErrorLogMessage is off")
	}
}

func TestReadWriteKeyFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		scenario string
		content  string
		want     []string
		errHas   string
	}{
		{"one key per line, comments and blank lines skipped, CRLF and spaces trimmed",
			"# rotated 2024-05-01\r\nwk_live_one\r\n\n  wk_live_two  \n#wk_live_old\n", []string{"wk_live_one", "wk_live_two"}, ""},
		{"a single key without a newline, as a Kubernetes secret mounts it", "wk_live_only", []string{"wk_live_only"}, ""},
		{"a file of comments only is refused, since no keys would accept any", "# none yet\n\n", nil, "holds no write key"},
		{"an empty file is refused", "", nil, "holds no write key"},
		{"a key with a comment after it is refused, naming the line", "wk_live_one\nkkkk # old one\n", nil, "line 2: white space inside a key"},
		{"a file over 1 MiB is refused", strings.Repeat("k", 2<<20), nil, "over"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			path := filepath.Join(dir, "keys")
			writeFile(t, path, []byte(tt.content))
			got, err := ReadWriteKeyFile(path)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one with %q", err, tt.errHas)
				}
				if strings.Contains(err.Error(), "kkkk") {
					t.Error("the error quotes the file")
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("= %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := ReadWriteKeyFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--write-key-file") {
		t.Errorf("a missing file: %v, want an error naming --write-key-file", err)
	}
}

// TestWriteKeyFileReload rotates keys the way Kubernetes does, then SIGHUP
// (Reload): the new set applies at once, and a file left empty or missing
// keeps the previous set rather than opening the door to any key.
func TestWriteKeyFileReload(t *testing.T) {
	const flagKey, keyA, keyB = "wk_flag_0000000000", "wk_file_aaaaaaaaaa", "wk_file_bbbbbbbbbb"
	path := filepath.Join(t.TempDir(), "write-keys")
	writeFile(t, path, []byte(keyA+"\n"))
	cfg := DefaultConfig()
	cfg.WriteKeys = []string{flagKey}
	cfg.WriteKeyFile = path
	h := newHarness(t, cfg)
	status := func(key string) int {
		return h.post(t, "/v1/track", `{"userId":"u","event":"e"}`, basicAuth(key)).status
	}
	want := func(accepted ...string) {
		t.Helper()
		for _, k := range []string{flagKey, keyA, keyB, "wk_unknown_0000000"} {
			w := http.StatusUnauthorized
			if slices.Contains(accepted, k) {
				w = http.StatusOK
			}
			if got := status(k); got != w {
				t.Errorf("key %s: %d, want %d", k, got, w)
			}
		}
	}
	want(flagKey, keyA)

	writeFile(t, path, []byte("# rotated\n"+keyB+"\n"))
	if err := h.s.Reload(); err != nil {
		t.Fatal(err)
	}
	want(flagKey, keyB)

	writeFile(t, path, []byte("# emptied by mistake\n"))
	if err := h.s.Reload(); err == nil {
		t.Error("Reload of a file without keys succeeded")
	}
	want(flagKey, keyB)

	os.Remove(path)
	if err := h.s.Reload(); err == nil {
		t.Error("Reload of a missing file succeeded")
	}
	want(flagKey, keyB)

	if err := h.s.SetWriteKeys([]string{keyA}); err != nil {
		t.Fatal(err)
	}
	want(keyA)
	if err := h.s.SetWriteKeys([]string{keyA, ""}); err == nil {
		t.Error("SetWriteKeys took an empty key")
	}
	want(keyA)
}

func TestWriteKeyFileMustHoldKeysAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "write-keys")
	writeFile(t, path, []byte("# nothing\n"))
	cfg := DefaultConfig()
	cfg.WriteKeyFile = path
	if _, err := New(cfg, &fakeSpool{}, Options{}, nil, nil); err == nil || !strings.Contains(err.Error(), "holds no write key") {
		t.Fatalf("New = %v, want a refusal", err)
	}
}

func TestRedactQuoted(t *testing.T) {
	for in, want := range map[string]string{
		`error when serving connection "127.0.0.1:42943"<->"127.0.0.1:53282": cannot find whitespace in the first line of request "GARBAGE wk_secret\r\n\r\n": buffer size=40`: `error when serving connection "127.0.0.1:42943"<->"127.0.0.1:53282": cannot find whitespace in the first line of request "…": buffer size=40`,
		`cannot parse "Authorization: Basic d2s6\"x\"" here`: `cannot parse "…" here`,
		`"[::1]:8080" and "host:port"`:                       `"[::1]:8080" and "…"`,
		`no quotes`:                                          `no quotes`,
	} {
		if got := redactQuoted(in); got != want {
			t.Errorf("redactQuoted(%s)\n = %s\nwant %s", in, got, want)
		}
	}
}

// TestAdminBehindAReverseProxy: a reverse proxy on the same host makes
// every client look like loopback; a request it relayed is not local, so
// the dead-letter endpoints want the admin token.
func TestAdminBehindAReverseProxy(t *testing.T) {
	for _, hdr := range []string{"X-Forwarded-For: 203.0.113.9", "Forwarded: for=203.0.113.9", "X-Real-IP: 203.0.113.9"} {
		t.Run(hdr, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.AdminToken = "s3cret"
			dlq := &fakeDLQ{letters: testLetters()}
			h := newHarness(t, cfg, withOptions(Options{DLQ: dlq}))
			for _, path := range []string{"/admin/dlq/replay", "/admin/dlq/purge"} {
				wantAnswer(t, h.do(t, http.MethodPost, path, nil, hdr), http.StatusForbidden, "forbidden.json")
				if a := h.do(t, http.MethodPost, path, nil, hdr, "Authorization: Bearer s3cret"); a.status != http.StatusOK {
					t.Errorf("%s with the token = %d, want 200", path, a.status)
				}
			}
			if a := h.do(t, http.MethodGet, "/admin/dlq", nil, hdr); a.status != http.StatusForbidden {
				t.Errorf("GET /admin/dlq relayed = %d, want 403", a.status)
			}
			if a := h.do(t, http.MethodPost, "/admin/dlq/purge", nil); a.status != http.StatusOK {
				t.Errorf("a loopback client, not relayed = %d, want 200", a.status)
			}
		})
	}
}

// TestSlowBodiesHoldUpNoOneElse: a request takes one of the GOMAXPROCS
// parse tokens before its body is read, and hands it on when the body is
// slow to arrive. Slow bodies on more connections than there are tokens
// leave other requests served while they are still arriving, and each
// slow body stored once it has arrived whole.
func TestSlowBodiesHoldUpNoOneElse(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	event := func(name string) string {
		return `{"userId":"u","event":"` + name + `","properties":{"pad":"` + strings.Repeat("x", 20<<10) + `"}}`
	}
	slow := make([]*rawConn, 2*runtime.GOMAXPROCS(0)+1)
	bodies := make([]string, len(slow))
	for i := range slow {
		bodies[i] = event(fmt.Sprintf("slow %d", i))
		slow[i] = dialRaw(t, h)
		// fasthttp reads 8 KiB of a body with its header; the handler
		// waits for the rest.
		fmt.Fprintf(slow[i], "POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(bodies[i]), bodies[i][:10<<10])
	}
	deadline := time.Now().Add(patience(t))
	for h.s.slowBodies.Load() < int64(len(slow)) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d slow bodies handed their token on", h.s.slowBodies.Load(), len(slow))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a := h.post(t, "/v1/track", event("fast")); a.status != http.StatusOK {
		t.Fatalf("a request beside the slow ones: status %d: %s", a.status, a.body)
	}
	if n := len(h.sp.Calls()); n != 1 {
		t.Fatalf("%d requests stored while the slow bodies were arriving, want the other one", n)
	}
	for i, c := range slow {
		io.WriteString(c, bodies[i][10<<10:])
		if status, _, b := c.answer(t); status != http.StatusOK {
			t.Fatalf("slow request %d: status %d: %s", i, status, b)
		}
	}
	var stored []string
	for _, call := range h.sp.Calls() {
		for _, e := range call.events {
			stored = append(stored, string(e.Data))
		}
	}
	for i := range slow {
		name := fmt.Sprintf(`"slow %d"`, i)
		if !slices.ContainsFunc(stored, func(d string) bool { return strings.Contains(d, name) }) {
			t.Errorf("slow request %d answered but not stored", i)
		}
	}
}
