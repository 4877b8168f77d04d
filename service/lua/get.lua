-- Read a verification without its code hash. KEYS[1] verification.
-- Returns the record as one JSON string, or false when there is none.
return record_json(KEYS[1])
