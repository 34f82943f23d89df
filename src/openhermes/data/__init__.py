"""The data road: records -> conversations -> checked -> tokens -> packed rows."""
