package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// /ui lists, under its destination, a write key the upstream refuses:
// masked, with its state and backlog.
func TestUIListsTheLanesOfRefusedWriteKeys(t *testing.T) {
	t.Parallel()
	chromium := findChromium(t)
	const refusedKey = "rkey-revoked-123"
	upstream := testkit.NewSink(t, func(_ int, r *testkit.Request) testkit.Answer {
		if r.User == refusedKey {
			return testkit.Answer{Status: http.StatusUnauthorized, Body: `{"message":"invalid write key"}`}
		}
		return testkit.Answer{}
	})
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--destination", "seg=segment+"+upstream.URL,
		"--flush-interval", "20ms", "--backoff-min", "50ms", "--backoff-max", "200ms")
	for _, key := range []string{refusedKey, "gkey-fine-456"} {
		if status, err := postBatch(t.Context(), http.DefaultClient, p.url(), key, trackEvents(key[:4], 7)); err != nil || status != 200 {
			t.Fatalf("POST: %d %v", status, err)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	bctx := newBrowser(t, ctx, chromium)
	const lanes = `document.querySelector('[data-dest="seg"] .lanes')`
	if err := chromedp.Do(bctx,
		chromedp.Navigate(p.url()+"/ui"),
		chromedp.WaitVisible(`[data-dest="seg"]`),
		chromedp.Poll[chromedp.Void](lanes+`?.textContent.includes('misconfigured')`,
			chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)),
	); err != nil {
		t.Fatalf("the page lists no misconfigured lane: %v", err)
	}
	text, err := chromedp.Run(bctx, chromedp.Evaluate[string](lanes+`.textContent`))
	if err != nil || !strings.Contains(text, "1 write key(s) not up") || !strings.Contains(text, "rkey…") ||
		!strings.Contains(text, "401") || strings.Contains(text, refusedKey) {
		t.Errorf("the lanes read %q (%v)", text, err)
	}
}
