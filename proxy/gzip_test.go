package proxy

import (
	"bytes"
	"net/http"
	"runtime"
	"testing"

	"github.com/klauspost/compress/gzip"
)

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzipBomb is mib MiB of zeros, gzipped, with bytes that are not gzip
// after the first MiB that inflates past limit: a reader that stops at the
// limit never reaches them and answers too_large, one that inflated on
// would answer invalid_gzip. So the answer tells whether the rest of the
// bomb was inflated, whatever the speed of the machine. It is built from
// concatenated gzip members, which every gzip reader must accept, so the
// test does not spend seconds compressing a GiB.
func gzipBomb(t testing.TB, mib, limit int) []byte {
	t.Helper()
	member := gzipped(t, make([]byte, 1<<20))
	past := limit>>20 + 1
	bomb := bytes.Repeat(member, past)
	bomb = append(bomb, "not gzip"...)
	return append(bomb, bytes.Repeat(member, mib-past)...)
}

func TestGzip(t *testing.T) {
	event := []byte(`{"batch":[{"type":"track","userId":"u","event":"e"}]}`)

	t.Run("a gzip body is inflated and stored", func(t *testing.T) {
		for _, enc := range []string{"gzip", "x-gzip", "GZIP"} {
			h := newHarness(t, DefaultConfig())
			a := h.do(t, http.MethodPost, "/v1/batch", gzipped(t, event), "Content-Encoding: "+enc)
			wantAnswer(t, a, http.StatusOK, "success.json")
			h.sp.onlyCall(t)
		}
	})

	t.Run("a body that is not gzip is refused", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		a := h.do(t, http.MethodPost, "/v1/batch", event, "Content-Encoding: gzip")
		wantAnswer(t, a, http.StatusBadRequest, "invalid_gzip.json")
		h.sp.wantNoCalls(t)
	})

	t.Run("a truncated gzip body is refused", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		z := gzipped(t, event)
		a := h.do(t, http.MethodPost, "/v1/batch", z[:len(z)-6], "Content-Encoding: gzip")
		wantAnswer(t, a, http.StatusBadRequest, "invalid_gzip_truncated.json")
		h.sp.wantNoCalls(t)
	})

	t.Run("a gzip body that inflates over --max-request-bytes is refused", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.MaxRequestBytes = 1000
		cfg.MaxEventBytes = 500
		h := newHarness(t, cfg)
		big := []byte(`{"batch":[{"type":"track","userId":"u","event":"` + string(bytes.Repeat([]byte("x"), 1000)) + `"}]}`)
		a := h.do(t, http.MethodPost, "/v1/batch", gzipped(t, big), "Content-Encoding: gzip")
		wantAnswer(t, a, http.StatusBadRequest, "too_large_request.json")
		h.sp.wantNoCalls(t)
	})

	bombs := []struct {
		scenario   string
		mib        int
		maxRequest int
		fixture    string
	}{
		// ~400 KiB on the wire, under the default 500 KiB: only the cap on
		// inflation stops it.
		{"a 400 MiB gzip bomb under the default limits is cut off at the limit", 400, DefaultMaxRequestBytes, "too_large_request_default.json"},
		// ~1 MiB on the wire, so the wire limit is raised to let it in.
		{"a 1 GiB gzip bomb is cut off at the limit", 1024, 2 << 20, "too_large_request_2mib.json"},
	}
	for _, tt := range bombs {
		t.Run(tt.scenario+", its rest never inflated, in flat memory", func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.MaxRequestBytes = tt.maxRequest
			h := newHarness(t, cfg)
			bomb := gzipBomb(t, tt.mib, tt.maxRequest)
			if len(bomb) > tt.maxRequest {
				t.Fatalf("bomb is %d bytes on the wire, over the %d limit: the test would not reach inflation", len(bomb), tt.maxRequest)
			}

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			a := h.do(t, http.MethodPost, "/v1/batch", bomb, "Content-Encoding: gzip")
			runtime.ReadMemStats(&after)

			wantAnswer(t, a, http.StatusBadRequest, tt.fixture)
			h.sp.wantNoCalls(t)
			// Client and server share this process; both together must stay
			// far below what inflating the bomb would take.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("allocated %d MiB answering a bomb, want < 64 MiB", alloc>>20)
			}
		})
	}
}
