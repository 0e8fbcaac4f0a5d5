package migrations

import (
	"bytes"
	"os"
	"testing"
)

// The demo's built-in rules are the README's example: the root rules.toml.
func TestRulesAreTheRootRules(t *testing.T) {
	root, err := os.ReadFile("../rules.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(Rules, root) {
		t.Fatal("migrations/rules.toml differs from the root rules.toml; the demo builds in the first as the example the README shows. " +
			"Make them the same: copy the one you changed over the other (cp rules.toml migrations/rules.toml)")
	}
}
