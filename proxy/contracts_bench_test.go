package proxy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/valyala/fasthttp"
)

// benchPlan is a tracking plan of 50 track events shaped like a shop's,
// Order Completed among them; its rule for Order Completed is kept by
// realisticEvent when keep, broken (a property it lacks is required)
// otherwise.
func benchPlan(tb testing.TB, keep bool) string {
	tb.Helper()
	var rules []any
	for i := range 50 {
		name := fmt.Sprintf("Event %02d", i)
		required := []string{"orderId", "total", "currency"}
		if i == 0 {
			name = "Order Completed"
			if !keep {
				required = append(required, "revenue")
			}
		}
		rules = append(rules, map[string]any{"type": "TRACK", "key": name, "version": 1, "jsonSchema": map[string]any{
			"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "required": []string{"properties"},
			"properties": map[string]any{
				"properties": map[string]any{"type": "object", "required": required, "properties": map[string]any{
					"orderId": map[string]any{"type": "string"}, "total": map[string]any{"type": "number", "minimum": 0},
					"currency": map[string]any{"enum": []string{"USD", "EUR", "GBP"}},
					"products": map[string]any{"type": "array", "items": map[string]any{"type": "object", "required": []string{"sku"}}},
				}},
				"context": map[string]any{"type": "object", "properties": map[string]any{"ip": map[string]any{"type": "string", "format": "ipv4"}}},
			},
		}})
	}
	b, _ := json.Marshal(map[string]any{"rules": rules})
	path := filepath.Join(tb.TempDir(), "plan.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// BenchmarkContracts is BenchmarkHandleBatch/100 with a tracking plan
// (every event kept, every event broken and flagged or blocked) and with
// five privacy paths, against none.
func BenchmarkContracts(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  func(b *testing.B, c *Config)
	}{
		{"none", func(*testing.B, *Config) {}},
		{"plan-kept", func(b *testing.B, c *Config) { c.TrackingPlan = benchPlan(b, true) }},
		{"plan-flag", func(b *testing.B, c *Config) { c.TrackingPlan = benchPlan(b, false) }},
		{"plan-block", func(b *testing.B, c *Config) { c.TrackingPlan, c.TrackingPlanMode = benchPlan(b, false), "block" }},
		{"privacy-5", func(b *testing.B, c *Config) {
			key := filepath.Join(b.TempDir(), "key")
			_ = os.WriteFile(key, []byte("k"), 0o600)
			c.DropFields = []string{"context.ip,context.userAgent,properties.coupon"}
			c.HashFields = []string{"userId,anonymousId"}
			c.HashKeyFile = key
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.WriteKeys = []string{"wk_live_0123456789abcdef"}
			c.cfg(b, &cfg)
			s, err := New(cfg, nopSpool{}, Options{}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			body := realisticBatch(100)
			ctx := batchRequest(b, body)
			h := s.Handler()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				ctx.Request.SetBody(body)
				h(ctx)
				if ctx.Response.StatusCode() != fasthttp.StatusOK {
					b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
				ctx.Response.Reset()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*100), "ns/event")
		})
	}
}
