package proxy

import (
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/segment"
)

// validate applies the Segment spec rules to an event object. An event
// sent to a single-event endpoint without a type takes the endpoint's; an
// event of a batch must say its own.
func validate(ep endpoint, f *fields) segment.Rule {
	var typ string
	switch {
	case f.typ.set:
		if f.typ.t != fastjson.TypeString {
			return segment.RuleUnknownType
		}
		typ = unsafeString(f.typ.s)
	case ep.single():
		typ = ep.String()
	default:
		return segment.RuleMissingType
	}
	return segment.Check(typ, segment.Has{
		UserID:      f.userID.isID(),
		AnonymousID: f.anonID.isID(),
		PreviousID:  f.prevID.isID(),
		GroupID:     f.groupID.isID(),
		Event:       f.event.t == fastjson.TypeString && len(f.event.s) > 0,
	})
}
