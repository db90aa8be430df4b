package segment

import "strings"

// Rule is a rule of Segment's spec that an event can break. Segment answers
// 200 to a request holding such an event and drops the event; what the
// caller does instead is its own choice.
type Rule uint8

// The rules, RuleOK for none broken.
const (
	RuleOK Rule = iota
	RuleNotObject
	RuleMissingType
	RuleUnknownType
	RuleMissingIdentity
	RuleAliasUserID
	RuleAliasPreviousID
	RuleTrackEvent
	RuleGroupID
	// NumRules is how many rules there are, RuleOK included, so that a
	// table indexed by Rule can be an array.
	NumRules
)

var ruleCodes = [NumRules]string{
	"", "not_object", "missing_type", "unknown_type", "missing_identity",
	"missing_user_id", "missing_previous_id", "missing_event", "missing_group_id",
}

var ruleTexts = [NumRules]string{
	"",
	"event is not a JSON object",
	"type is missing",
	"type is not one of " + strings.Join(Types(), ", "),
	"userId or anonymousId is required",
	"alias requires userId",
	"alias requires previousId",
	"track requires event",
	"group requires groupId",
}

// Code is the rule's name for machines, in snake case: a bounded set, fit
// for a metric's label. "" for RuleOK.
func (r Rule) Code() string { return ruleCodes[r] }

// String says the rule to a person, as an answer or a dead letter does.
// "" for RuleOK.
func (r Rule) String() string { return ruleTexts[r] }

// Has says which of the fields the spec requires an event has, each with a
// value that can serve: an id (userId, anonymousId, previousId, groupId)
// is a non-empty string or a number, as several SDKs send numeric ids;
// event is a non-empty string.
type Has struct {
	UserID, AnonymousID, PreviousID, GroupID, Event bool
}

// Check returns the first rule an event of type typ breaks with the fields
// it has, RuleOK for none: every type but alias requires userId or
// anonymousId, track requires event and group requires groupId; alias
// requires userId and previousId.
func Check(typ string, has Has) Rule {
	identified := has.UserID || has.AnonymousID
	switch typ {
	case Identify, Page, Screen:
		if !identified {
			return RuleMissingIdentity
		}
	case Track:
		switch {
		case !identified:
			return RuleMissingIdentity
		case !has.Event:
			return RuleTrackEvent
		}
	case Group:
		switch {
		case !identified:
			return RuleMissingIdentity
		case !has.GroupID:
			return RuleGroupID
		}
	case Alias:
		switch {
		case !has.UserID:
			return RuleAliasUserID
		case !has.PreviousID:
			return RuleAliasPreviousID
		}
	default:
		return RuleUnknownType
	}
	return RuleOK
}
