package testkit

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/klauspost/compress/gzip"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestEventually(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ready atomic.Bool
		time.AfterFunc(time.Second, func() { ready.Store(true) })
		start := time.Now()
		Eventually(t, ready.Load, "never ready")
		if waited := time.Since(start); waited < time.Second || waited > time.Second+pollEvery {
			t.Errorf("returned %v after the condition held at 1s", waited)
		}
	})

	t.Run("it gives up after Patience with the message, formatted at the failure", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var polls atomic.Int32
			rec := &fatalRecorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				Eventually(rec, func() bool { polls.Add(1); return false }, "polled %d times, state %v",
					func() any { return polls.Load() }, "fixed")
			}()
			<-done
			want := fmt.Sprintf("not within %v: polled %d times, state fixed", Patience, polls.Load())
			if rec.msg != want {
				t.Errorf("message %q, want %q", rec.msg, want)
			}
		})
	})
}

func TestBuffer(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 100 {
				fmt.Fprintf(&b, "writer=%d line=%d\n", i, j)
			}
		})
	}
	wg.Wait()
	if n := len(b.Lines("")); n != 800 {
		t.Errorf("%d lines, want 800", n)
	}
	if n := len(b.Lines("writer=3 ")); n != 100 {
		t.Errorf("%d lines of writer 3, want 100", n)
	}
	if n := b.Count("line=99\n"); n != 8 {
		t.Errorf("line=99 written %d times, want 8", n)
	}

	var logs Buffer
	logs.Logger(t).Debug("debug is kept", "k", "v")
	if got := logs.Lines("debug is kept"); len(got) != 1 || !strings.Contains(got[0], "k=v") {
		t.Errorf("logged %q", logs.String())
	}
}

func post(t *testing.T, c *http.Client, url, contentEncoding, user string, body []byte) (int, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentEncoding != "" {
		req.Header.Set("Content-Encoding", contentEncoding)
	}
	if user != "" {
		req.SetBasicAuth(user, "")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func gzipped(t *testing.T, b string) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write([]byte(b)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestSinkDecodesEveryShapeAndCountsByMessageID(t *testing.T) {
	s := NewSink(t, func(_ int, r *Request) Answer {
		if slices.Contains(r.IDs, "refused") {
			return Answer{Status: 400, Body: "no"}
		}
		return Answer{}
	})
	for _, b := range []struct {
		encoding, user string
		body           []byte
	}{
		{"", "", []byte(`[{"messageId":"a"},{"messageId":"b"}]`)},
		{"gzip", "wk-1", gzipped(t, `{"batch":[{"messageId":"b"},{"messageId":"c"}],"sentAt":"2025-06-01T10:30:00.000Z"}`)},
		{"", "", []byte("{\"messageId\":\"d\"}\n{\"messageId\":\"e\"}\n")},
		{"", "", []byte(`[{"messageId":"refused"}]`)},
	} {
		if _, err := post(t, http.DefaultClient, s.URL+"/hook", b.encoding, b.user, b.body); err != nil {
			t.Fatal(err)
		}
	}
	if unique, total := s.Counts(); unique != 5 || total != 6 {
		t.Errorf("counts %d unique, %d total; want 5 and 6", unique, total)
	}
	if got := s.Delivered(); !slices.Equal(got, []string{"a", "b", "c", "d", "e"}) {
		t.Errorf("delivered %v", got)
	}
	if got := s.Order(); !slices.Equal(got, []string{"a", "b", "b", "c", "d", "e"}) {
		t.Errorf("order %v", got)
	}
	if got := s.Duplicates(); !slices.Equal(got, []string{"b x2"}) {
		t.Errorf("duplicates %v", got)
	}
	if s.Has("refused") {
		t.Errorf("an event answered 400 counts as delivered")
	}
	e, by, ok := s.Event("c")
	if !ok || e["messageId"] != "c" || by.User != "wk-1" || by.SentAt != "2025-06-01T10:30:00.000Z" || !by.Gzip || by.URI != "/hook" {
		t.Errorf("event c: %v, by %+v", e, by)
	}
	reqs := s.Requests()
	if len(reqs) != 4 || reqs[3].Status != 400 || reqs[0].Status != 200 || reqs[0].Done.Before(reqs[0].At) {
		t.Errorf("requests %+v", reqs)
	}
}

func TestSinkAnswers(t *testing.T) {
	t.Run("FirstN answers the first requests as told, then 200", func(t *testing.T) {
		s := NewSink(t, FirstN(2, Answer{Status: 503, Header: http.Header{"Retry-After": {"1"}}}))
		var got []int
		for range 3 {
			code, err := post(t, http.DefaultClient, s.URL, "", "", []byte(`[]`))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, code)
		}
		if !slices.Equal(got, []int{503, 503, 200}) {
			t.Errorf("answers %v", got)
		}
	})
	t.Run("a hanging request lasts until the client gives up", func(t *testing.T) {
		s := NewSink(t, FirstN(1, Answer{Hang: true}))
		c := &http.Client{Timeout: 50 * time.Millisecond}
		if _, err := post(t, c, s.URL, "", "", []byte(`[]`)); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("post = %v, want a timeout", err)
		}
		Eventually(t, func() bool { return s.Requests()[0].Status == http.StatusGatewayTimeout }, "hang not recorded as 504")
	})
	t.Run("a reset connection answers nothing", func(t *testing.T) {
		s := NewSink(t, FirstN(1, Answer{Reset: true}))
		if _, err := post(t, http.DefaultClient, s.URL, "", "", []byte(`[{"messageId":"x"}]`)); err == nil {
			t.Errorf("post to a reset connection succeeded")
		}
		if s.Has("x") {
			t.Errorf("an event whose connection was reset counts as delivered")
		}
	})
	t.Run("a request its client cut short is no error and delivers nothing", func(t *testing.T) {
		s := NewSink(t, nil)
		c, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		// A process killed while sending: the body stops short of its length.
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"messageId\":\"x\"")
		c.Close()
		if code, err := post(t, http.DefaultClient, s.URL, "", "", []byte(`[{"messageId":"y"}]`)); err != nil || code != 200 {
			t.Fatalf("post after the cut-short request: %d %v", code, err)
		}
		if reqs := s.Requests(); len(reqs) != 1 || s.Has("x") {
			t.Errorf("requests %+v: the one cut short counts", reqs)
		}
	})
	t.Run("a TLS sink is trusted only with its certificate", func(t *testing.T) {
		s := NewTLSSink(t, nil)
		if _, err := post(t, http.DefaultClient, s.URL, "", "", []byte(`[]`)); err == nil {
			t.Errorf("a self-signed sink was trusted by default")
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(s.CertificatePEM()) {
			t.Fatal("CertificatePEM holds no certificate")
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer c.CloseIdleConnections()
		if code, err := post(t, c, s.URL, "", "", []byte(`[]`)); err != nil || code != 200 {
			t.Errorf("post trusting the certificate: %d %v", code, err)
		}
	})
}
