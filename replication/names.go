package replication

import "regexp"

// The names the daemon gives its PostgreSQL objects when the rules file does
// not say otherwise.
const (
	DefaultSlot        = "pg_invalidator"
	DefaultPublication = "pg_invalidator"
)

// slotNamePattern is what PostgreSQL accepts as a replication slot name.
var slotNamePattern = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidSlotName reports whether name is a replication slot name PostgreSQL
// accepts: 1 to 63 lowercase letters, digits and underscores.
func ValidSlotName(name string) bool { return slotNamePattern.MatchString(name) }
