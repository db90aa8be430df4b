package proxy

import (
	"testing"

	"github.com/spillwayhq/spillway/internal/segment"
)

func TestRouteTakesEverySegmentEndpoint(t *testing.T) {
	paths := 0
	for _, e := range segment.Endpoints() {
		for _, path := range []string{e.Path, e.Short} {
			if path == "" {
				continue
			}
			paths++
			if ep, ok := route([]byte(path)); !ok || ep.String() != e.Name {
				t.Errorf("route(%s) = %v, %v; want the %s endpoint", path, ep, ok, e.Name)
			}
		}
	}
	if len(routes) != paths {
		t.Errorf("%d routes for %d paths", len(routes), paths)
	}
	for _, path := range []string{"/v1/m", "/v1/", "/v2/track", "/v1/track/", "/v1/Track"} {
		if ep, ok := route([]byte(path)); ok {
			t.Errorf("route(%s) = %v, want none", path, ep)
		}
	}
}
