export { compileConstraint, MAX_JSON_WHITESPACE, responseFormatConstraint, type CompiledConstraint, type ConstraintMatcher, type ConstraintSpec } from './constraint.ts';
export { checkSchema, type JsonSchema } from './schema.ts';
export { ConstrainedSource } from './source.ts';
