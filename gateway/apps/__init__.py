"""The applications on the public door (llmos.v1.Applications): named entities,
translation, and a customer-service assistant over a tenant's own documents."""
