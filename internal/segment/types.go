package segment

// Event types, as an event's "type" field spells them.
const (
	Track    = "track"
	Identify = "identify"
	Page     = "page"
	Screen   = "screen"
	Group    = "group"
	Alias    = "alias"
)

// Types returns the event types, in the order Segment's documentation
// lists them. The slice is the caller's.
func Types() []string {
	return []string{Track, Identify, Page, Screen, Group, Alias}
}

// IsType reports whether s is an event type. Types are lower case: Track
// is not one.
func IsType(s string) bool {
	switch s {
	case Track, Identify, Page, Screen, Group, Alias:
		return true
	}
	return false
}

// The endpoints that take a batch of events of any type; every other
// endpoint takes one event, of the type it is named after.
const (
	Batch  = "batch"
	Import = "import"
)

// Endpoint is an event endpoint of the tracking API.
type Endpoint struct {
	// Name is the event type the endpoint takes, or Batch or Import.
	Name string
	// Path is where SDKs post to it: "/v1/track".
	Path string
	// Short is the path analytics.js posts to instead, to save bytes in
	// the browser: "/v1/t". Empty for Import, which it never uses.
	Short string
}

// Endpoints returns the tracking API's event endpoints: one per event type,
// in the order of Types, then Batch and Import. The slice is the caller's.
func Endpoints() []Endpoint {
	return []Endpoint{
		{Track, "/v1/track", "/v1/t"},
		{Identify, "/v1/identify", "/v1/i"},
		{Page, "/v1/page", "/v1/p"},
		{Screen, "/v1/screen", "/v1/s"},
		{Group, "/v1/group", "/v1/g"},
		{Alias, "/v1/alias", "/v1/a"},
		{Batch, "/v1/batch", "/v1/b"},
		{Import, "/v1/import", ""},
	}
}
