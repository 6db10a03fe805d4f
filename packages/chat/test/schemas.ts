// JSON schemas the constrained-decoding tests generate under: every value bounded (string
// lengths, integer ranges, array sizes), so a random model reaches the end of the value.
import type { JsonSchema } from '../src/index.ts';

/** Schemas with every value bounded, so a random model reaches the end. */
export const SCHEMAS: Record<string, JsonSchema> = {
  nested: {
    type: 'object',
    properties: {
      name: { type: 'string', maxLength: 12 },
      age: { type: 'integer', minimum: 0, maximum: 150 },
      address: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 8 }, zip: { type: 'string', pattern: '^[0-9]{5}$' } },
        required: ['city', 'zip'],
        additionalProperties: false,
      },
    },
    required: ['name', 'age', 'address'],
    additionalProperties: false,
  },
  arrays: {
    type: 'object',
    properties: {
      tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, minItems: 1, maxItems: 4 },
      count: { type: 'integer' },
      score: { type: 'number' },
      point: { type: 'array', prefixItems: [{ type: 'integer', minimum: -9, maximum: 9 }, { type: 'boolean' }], minItems: 2, maxItems: 2 },
    },
    required: ['tags', 'count', 'score', 'point'],
    additionalProperties: false,
  },
  optional: {
    type: 'object',
    properties: {
      id: { type: 'integer', exclusiveMinimum: 0, exclusiveMaximum: 1000 },
      note: { type: ['string', 'null'], maxLength: 6 },
      kind: { const: 'tool' },
      ok: { type: 'boolean' },
    },
    required: ['id', 'kind'],
    additionalProperties: false,
  },
  refs: {
    $defs: { item: { type: 'object', properties: { n: { type: 'integer', minimum: 1, maximum: 99 }, s: { anyOf: [{ type: 'null' }, { enum: ['a', 'b'] }] } }, required: ['n', 's'], additionalProperties: false } },
    type: 'object',
    properties: { items: { type: 'array', items: { $ref: '#/$defs/item' }, maxItems: 3 } },
    required: ['items'],
    additionalProperties: false,
  },
};
