package pginvalidator

import _ "embed"

// ExampleRules is the repository's rules.toml, built into the binary so that
// the demo runs from anywhere.
//
//go:embed rules.toml
var ExampleRules []byte
