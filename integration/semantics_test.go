package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
)

const productsSchema = `
CREATE TABLE products (
	id          bigint PRIMARY KEY,
	category_id bigint,
	name        text,
	body        text
);
ALTER TABLE products REPLICA IDENTITY FULL;
`

const productsRules = `
[[rule]]
table = "products"
del  = ["{p}product:<id>", "{p}list:cat:<category_id>"]
incr = ["{p}version:products"]
` + markerRule

func TestInsertUpdateDelete(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.start(f.rules(productsRules))

	t.Run("insert renders the new row", func(t *testing.T) {
		f.cache("product:1", "list:cat:3")
		f.exec("INSERT INTO products (id, category_id, name) VALUES (1, 3, 'lamp')")
		f.waitGone("product:1", "list:cat:3")
		f.waitValue("version:products", "1")
	})
	t.Run("update renders the old and the new row", func(t *testing.T) {
		f.cache("product:1", "list:cat:3", "list:cat:5")
		f.exec("UPDATE products SET category_id = 5 WHERE id = 1")
		f.waitGone("product:1", "list:cat:3", "list:cat:5")
		f.waitValue("version:products", "2")
	})
	t.Run("delete renders the old row", func(t *testing.T) {
		f.cache("product:1", "list:cat:5")
		f.exec("DELETE FROM products WHERE id = 1")
		f.waitGone("product:1", "list:cat:5")
		f.waitValue("version:products", "3")
	})
	t.Run("keys of other rows stay", func(t *testing.T) {
		f.cache("product:2", "list:cat:9")
		f.exec("INSERT INTO products (id, category_id) VALUES (3, 4)")
		f.sync()
		if !f.exists("product:2") || !f.exists("list:cat:9") {
			t.Fatal("a key no change derived was deleted")
		}
	})
}

func TestIncrOncePerTransaction(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.start(f.rules(productsRules))

	// One transaction touching 50 rows bumps the version once.
	f.exec("INSERT INTO products (id, category_id) SELECT g, g % 7 FROM generate_series(1, 50) g")
	f.sync()
	if got := f.get("version:products"); got != "1" {
		t.Fatalf("after one 50-row transaction version = %q, want 1", got)
	}
	// Three transactions bump it three times, however they are batched.
	for i := 0; i < 3; i++ {
		f.exec("UPDATE products SET name = 'x' || $1 WHERE id <= 10", strconv.Itoa(i))
	}
	f.sync()
	if got := f.get("version:products"); got != "4" {
		t.Fatalf("after three more transactions version = %q, want 4", got)
	}
}

func TestNullRendersNoKey(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.start(f.rules(productsRules))

	f.cache("product:1", "list:cat:")
	f.exec("INSERT INTO products (id, category_id) VALUES (1, NULL)")
	f.waitGone("product:1")
	f.sync()
	if !f.exists("list:cat:") {
		t.Fatal(`a NULL category_id rendered the key "list:cat:"; it must render no key`)
	}
}

func TestUnchangedToastTakenFromOldRow(t *testing.T) {
	f := newFixture(t, `
		CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text);
		ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
		ALTER TABLE docs REPLICA IDENTITY FULL;`, markerSchema)
	body := strings.Repeat("0123456789abcdef", 400) // 6.4 kB, stored out of line
	f.exec("INSERT INTO docs VALUES (1, 'a', $1)", body)
	f.start(f.rules(`
[[rule]]
table = "docs"
del = ["{p}doc-body:<body>", "{p}doc:<id>"]
` + markerRule))

	// The UPDATE leaves body alone, so the new row carries it as an
	// unchanged TOASTed value; the key must come from the old row.
	f.cache("doc-body:"+body, "doc:1")
	f.exec("UPDATE docs SET title = 'b' WHERE id = 1")
	f.waitGone("doc-body:"+body, "doc:1")
}

func TestTruncate(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.start(f.rules(`
[[rule]]
table = "products"
del  = ["{p}product:<id>", "{p}odd*[key]?:<id>"]
incr = ["{p}version:products", "{p}version:product:<id>"]
on   = ["truncate"]
` + markerRule))

	f.cache("product:1", "product:2", "productx", "odd*[key]?:1", "oddZ[key]?:1", "other:1")
	ctx := context.Background()
	f.rdb.Set(ctx, f.key("version:product:1"), 7, 0)
	f.rdb.Set(ctx, f.key("version:products"), 3, 0)

	f.exec("TRUNCATE products")
	f.waitGone("product:1", "product:2", "odd*[key]?:1")
	f.waitValue("version:products", "4")
	f.waitValue("version:product:1", "8")
	f.sync()
	for _, k := range []string{"productx", "oddZ[key]?:1", "other:1"} {
		if !f.exists(k) {
			t.Errorf("%s was deleted, but it does not match the template's pattern", k)
		}
	}
	if n, _ := f.rdb.Exists(ctx, f.key("version:product:2")).Result(); n != 0 {
		t.Error("TRUNCATE created a version key that did not exist")
	}
}

func TestOnFiltersOperations(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.start(f.rules(`
[[rule]]
table = "products"
del = ["{p}product:<id>"]
on  = ["delete"]
` + markerRule))
	f.cache("product:1")
	f.exec("INSERT INTO products (id) VALUES (1)")
	f.sync()
	if !f.exists("product:1") {
		t.Fatal("an insert ran a rule that handles only delete")
	}
	f.exec("DELETE FROM products WHERE id = 1")
	f.waitGone("product:1")
}

func TestSeveralRulesOnOneTable(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.start(f.rules(`
[[rule]]
table = "public.products"
del = ["{p}a:<id>"]

[[rule]]
table = "products"
del = ["{p}b:<id>"]
` + markerRule))
	f.cache("a:1", "b:1")
	f.exec("INSERT INTO products (id) VALUES (1)")
	f.waitGone("a:1", "b:1")
}

func TestPartitionedParent(t *testing.T) {
	f := newFixture(t, `
		CREATE TABLE events (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
		CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');`, markerSchema)
	f.start(f.rules(`
[[rule]]
table = "events"
del = ["{p}event:<region>:<id>"]
` + markerRule))
	f.cache("event:eu:1", "event:us:2")
	f.exec("INSERT INTO events VALUES (1, 'eu'), (2, 'us')")
	f.waitGone("event:eu:1", "event:us:2")
}
