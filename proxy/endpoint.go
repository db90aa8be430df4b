package proxy

import (
	"slices"

	"github.com/spillwayhq/spillway/internal/segment"
)

// endpoint is what a request path asks for; it is also the bounded label
// set of the per-endpoint metrics.
type endpoint uint8

const (
	epTrack endpoint = iota
	epIdentify
	epPage
	epScreen
	epGroup
	epAlias
	epBatch
	epImport
	numEndpoints
)

var endpointNames = [numEndpoints]string{
	segment.Track, segment.Identify, segment.Page, segment.Screen, segment.Group, segment.Alias,
	segment.Batch, segment.Import,
}

func (e endpoint) String() string { return endpointNames[e] }

// single reports whether the endpoint takes one event rather than a batch.
func (e endpoint) single() bool { return e < epBatch }

// routes maps each path of segment.Endpoints, analytics.js's short ones
// included, to its endpoint.
var routes = func() map[string]endpoint {
	m := make(map[string]endpoint)
	for _, e := range segment.Endpoints() {
		i := slices.Index(endpointNames[:], e.Name)
		if i < 0 {
			panic("proxy: no endpoint for " + e.Path)
		}
		m[e.Path] = endpoint(i)
		if e.Short != "" {
			m[e.Short] = endpoint(i)
		}
	}
	return m
}()

// route maps a path to its endpoint.
func route(path []byte) (endpoint, bool) {
	ep, ok := routes[string(path)]
	return ep, ok
}
